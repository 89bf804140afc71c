"""What the leader's periodic database jobs (pruning, the hourly rollup) share.

Each runs on its own connection, under an advisory lock of its own (one job of a kind per
database, even with two self-declared leaders), and logs a failure once per kind of error
until a run succeeds again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import asyncpg

from clawd.core.errors import DatabaseError
from clawd.keep.store.migrations import Conn
from clawd.keep.store.pg_errors import TRANSIENT

ConnectionFactory = Callable[[], AbstractAsyncContextManager[Conn]]

DB_ERRORS = (DatabaseError, asyncpg.PostgresError, *TRANSIENT)


@dataclass(frozen=True, slots=True)
class LeaderDb:
    """How a job reaches the database: a connection of its own per run, used only while
    `is_leader()` (asked again between batches: leadership can be lost mid-run)."""

    connect: ConnectionFactory
    is_leader: Callable[[], bool]


@contextlib.asynccontextmanager
async def advisory_lock(conn: Conn, lock_id: int) -> AsyncIterator[bool]:
    """Whether `lock_id` is ours (never waits); released on exit, quietly if the link broke."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id):
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)


class FailureLog:
    """One warning per kind of failure until a run succeeds again, then one info line."""

    def __init__(self, log: Any, failed_event: str, recovered_event: str) -> None:
        self._log = log
        self._failed_event = failed_event
        self._recovered_event = recovered_event
        self._last: str | None = None

    def failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        if kind == self._last:
            return
        self._last = kind
        self._log.warning(
            self._failed_event,
            kind=kind,
            reason=str(exc) or kind,
            action="retrying at the next interval",
        )

    def succeeded(self) -> None:
        if self._last is not None:
            self._log.info(self._recovered_event, after=self._last)
            self._last = None
