"""Errors a person can act on; the CLI prints their message and exits 2."""


class ClawdError(Exception):
    """Base of every error clawd reports to a user."""


class ConfigError(ClawdError):
    """config.json is missing, unreadable, not JSON, or has invalid values."""


class StoreError(ClawdError):
    """The JSON store could not be read or written."""


class DatabaseError(ClawdError):
    """PostgreSQL could not be reached or refused what clawd asked of it."""


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL is down or unreachable; writes will be spooled and retried."""


class MigrationError(DatabaseError):
    """A schema migration could not be applied."""


class SkillSyncError(ClawdError):
    """Skills could not be fetched from the shared repository or installed."""


class HistoryError(ClawdError):
    """A history command (incidents, report) cannot run as asked."""


class MetricsServerError(ClawdError):
    """The metrics endpoint cannot listen on `metrics.listen` (port in use, bad address)."""
