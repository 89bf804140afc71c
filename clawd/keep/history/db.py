"""Opening PostgreSQL for a history command, and its errors as one line."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from clawd.config.sections import PostgresSettings
from clawd.core.errors import DatabaseError, DatabaseUnavailable, HistoryError
from clawd.keep.history.collect import CONNECTIONS
from clawd.keep.store.migrations import Conn, applied_migrations, load_migrations
from clawd.keep.store.pg_errors import TRANSIENT
from clawd.keep.store.pg_store import PgStore

T = TypeVar("T")

INDEX_MIGRATION = "003-history-indexes.sql"
ROLLUP_MIGRATION = "004-ping-rollup.sql"


async def open_store(pg: PostgresSettings) -> PgStore:
    """A small pool; the schema is left as it is (read-only roles welcome)."""
    size = CONNECTIONS + 1  # the snapshot's exporter, plus one per range of peers
    small = pg.model_copy(update={"pool_min": size, "pool_max": size})
    return await PgStore.open(small, run_migrations=False)


async def run_reading(store: PgStore, work: Callable[[asyncpg.Pool], Coroutine[Any, Any, T]]) -> T:
    """`work(pool)` with PostgreSQL's failures turned into one-line ClawdErrors."""
    target = store.settings.target()
    try:
        async with store.pool.acquire() as conn:
            await _note_pending_migrations(conn)
        return await work(store.pool)
    except asyncpg.UndefinedTableError:
        raise HistoryError(
            f"no clawd schema in PostgreSQL at {target}: run `clawd db migrate` "
            "(or start the daemon once with backend=postgres)"
        ) from None
    except TRANSIENT as exc:
        raise DatabaseUnavailable(
            f"lost PostgreSQL at {target}: {exc or type(exc).__name__}"
        ) from None
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"PostgreSQL at {target} refused: {exc}") from None


async def _note_pending_migrations(conn: Conn) -> None:
    try:
        applied = await applied_migrations(conn)
    except asyncpg.InsufficientPrivilegeError:
        return  # a role that may not read the migrations table: no hint, no failure
    pending = [m.name for m in await asyncio.to_thread(load_migrations) if m.name not in applied]
    if INDEX_MIGRATION in pending:
        print(
            f"note: migration {INDEX_MIGRATION} is not applied, so reports read the table "
            "instead of an index: run `clawd db migrate` as the schema owner",
            file=sys.stderr,
        )
    if ROLLUP_MIGRATION in pending:
        print(
            f"note: migration {ROLLUP_MIGRATION} is not applied, so reports read every ping "
            "instead of hourly rollups: run `clawd db migrate` as the schema owner",
            file=sys.stderr,
        )
