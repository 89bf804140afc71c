"""A dedicated PostgreSQL connection for the pruner, apart from the writers' pool."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from clawd.config.sections import PostgresSettings
from clawd.keep.store.pg_errors import TRANSIENT, connect_error

APPLICATION_NAME = "clawd-retention"
CLOSE_TIMEOUT_S = 5.0


@contextlib.asynccontextmanager
async def dedicated_connection(pg: PostgresSettings) -> AsyncIterator[asyncpg.Connection]:
    """One connection to `pg`, closed on exit; DatabaseUnavailable/DatabaseError if none."""
    try:
        conn = await asyncpg.connect(
            **pg.connect_kwargs(), server_settings={"application_name": APPLICATION_NAME}
        )
    except Exception as exc:
        raise connect_error(exc, pg) from None
    try:
        yield conn
    finally:
        try:
            await conn.close(timeout=CLOSE_TIMEOUT_S)
        except TRANSIENT:
            conn.terminate()
