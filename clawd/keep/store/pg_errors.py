"""asyncpg / socket failures -> one line naming host:port/database and the cause."""

from __future__ import annotations

import asyncio
import socket

import asyncpg

from clawd.config.sections import PostgresSettings
from clawd.core.errors import DatabaseError, DatabaseUnavailable

MIN_SERVER_MAJOR = 12

# Failures that mean "the server is not there right now": retry, spool meanwhile.
TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # a connection the server just dropped, not yet seen closed
)


def _cause(exc: BaseException, pg: PostgresSettings) -> tuple[str, bool]:
    """(human cause, transient?) for a connection failure."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"password authentication failed for user '{pg.user}'", False
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"database '{pg.database}' does not exist "
            f"(create it: createdb -O {pg.user} {pg.database})",
            False,
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"access refused for user '{pg.user}': {exc}", False
    if isinstance(exc, socket.gaierror):
        return f"unknown host '{pg.host}'", False
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)", True
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {pg.connect_timeout_seconds:g} s", True
    if isinstance(exc, TRANSIENT):
        return str(exc) or type(exc).__name__, True
    return f"{type(exc).__name__}: {exc}", False


def connect_error(exc: BaseException, pg: PostgresSettings) -> DatabaseError:
    """The ClawdError to raise for a failed connection attempt."""
    cause, transient = _cause(exc, pg)
    message = f"cannot connect to PostgreSQL at {pg.target()}: {cause}"
    return DatabaseUnavailable(message) if transient else DatabaseError(message)


def too_old_error(major: int, full: str, pg: PostgresSettings) -> DatabaseError:
    return DatabaseError(
        f"PostgreSQL at {pg.target()} is version {full}; clawd needs {MIN_SERVER_MAJOR} or newer"
    )
