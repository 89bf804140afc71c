"""Backup failures a person can act on (a ClawdError: the CLI prints it and exits 2)."""

from clawd.core.errors import ClawdError


class BackupError(ClawdError):
    """A backup, verification or restore could not be done; the message says why."""
