"""clawd: the claw-clan fleet daemon."""

__version__ = "0.1.0"
