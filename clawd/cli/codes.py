"""Exit codes the clawd commands share (besides 0, 1 for a failed action, and
cli_output.EXIT_OUTPUT_CUT)."""

from __future__ import annotations

# A user error: bad config, bad arguments, a command that needs what is not there.
EXIT_USER_ERROR = 2
# `clawd status` when no daemon answers (LSB's "program is not running", as systemctl).
EXIT_NOT_RUNNING = 3
