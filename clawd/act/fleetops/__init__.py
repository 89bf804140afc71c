"""Leader-only fleet actions: reinstalling claw-clan on peers and pushing config.json."""
