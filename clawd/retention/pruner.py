"""The leader's periodic pruning of PostgreSQL history, one clawd at a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from clawd.errors import DatabaseError, DatabaseUnavailable
from clawd.retention.batches import (
    BatchPolicy,
    Tally,
    prune_by_timestamp,
    prune_ping_history,
)
from clawd.retention.result import PruneResult, TablePrune
from clawd.settings import HistorySettings, Settings
from clawd.store.migrations import ADVISORY_LOCK_ID, Conn
from clawd.store.pg_errors import TRANSIENT

FIRST_PRUNE_SECONDS = 300.0
log = structlog.get_logger("clawd.retention")

ConnectionFactory = Callable[[], AbstractAsyncContextManager[Conn]]

# "clawprun" in ASCII: one pruner per database, even with two self-declared leaders.
PRUNE_LOCK_ID = 0x636C61777072756E
assert PRUNE_LOCK_ID != ADVISORY_LOCK_ID

DEFAULT_BATCH_PAUSE_S = 0.05

_DB_ERRORS = (DatabaseError, asyncpg.PostgresError, *TRANSIENT)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _plan(settings: HistorySettings, now: datetime) -> list[tuple[str, datetime]]:
    """(table, cut-off) for every table with a retention set, ping_history first."""
    days = {
        "ping_history": settings.retention_days,
        "incident_log": settings.incident_retention_days,
        "skill_audit": settings.skill_audit_retention_days,
    }
    return [(table, now - timedelta(days=d)) for table, d in days.items() if d is not None]


class RetentionPruner:
    """Deletes history past its retention, every prune_interval_seconds, on the leader only."""

    name = "retention"

    def __init__(
        self,
        settings: HistorySettings,
        connect: ConnectionFactory,
        is_leader: Callable[[], bool],
        *,
        batch_pause_seconds: float = DEFAULT_BATCH_PAUSE_S,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._settings = settings
        self._connect = connect
        self._is_leader = is_leader
        self._pause = batch_pause_seconds
        self._clock = clock
        self._stopping = False
        self._wake = asyncio.Event()
        self._last_error: str | None = None
        self.last_result: PruneResult | None = None

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """Use the new history settings from the next batch on; a new interval counts from
        the last run."""
        self._settings = settings.history
        self._wake.set()

    def stop(self) -> None:
        """Ask run() to return; a prune in progress ends after its current batch."""
        self._stopping = True
        self._wake.set()

    async def run(self, ready: asyncio.Event) -> None:
        """Prune every prune_interval_seconds until stop(); the first within FIRST_PRUNE_SECONDS."""
        ready.set()
        # A daemon restarted more often than the interval must still prune.
        interval = self._settings.prune_interval_seconds
        last = time.monotonic() - interval + min(interval, FIRST_PRUNE_SECONDS)
        while not self._stopping:
            left = last + self._settings.prune_interval_seconds - time.monotonic()
            if left > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=left)
                continue  # stopped, new settings, or time is up: re-check
            last = time.monotonic()
            try:
                self.last_result = await self.prune_once(self._clock())
            except Exception as exc:  # never let one bad run end pruning for good
                self._failed(exc)

    async def prune_once(self, now: datetime) -> PruneResult:
        """Prune if leader and no other clawd is pruning; database errors are logged, not raised."""
        if not self._is_leader():
            log.debug("history_prune_skipped", reason="not_leader")
            return PruneResult(skipped="not_leader")
        plan = _plan(self._settings, now)
        if not plan:
            return PruneResult()
        began = time.perf_counter()
        tallies: list[Tally] = []
        try:
            async with self._connect() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK_ID):
                    log.info("history_prune_skipped", reason="another clawd is pruning")
                    return PruneResult(skipped="locked")
                try:
                    stopped = await self._prune_tables(conn, plan, tallies)
                finally:
                    with contextlib.suppress(*_DB_ERRORS):
                        await conn.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK_ID)
        except _DB_ERRORS as exc:
            self._failed(exc)
            done = tuple(t.result() for t in tallies)
            unavailable = not tallies and isinstance(exc, (DatabaseUnavailable, *TRANSIENT))
            return PruneResult(
                tables=done,
                seconds=round(time.perf_counter() - began, 3),
                skipped="unavailable" if unavailable else None,
                error=str(exc) or type(exc).__name__,
            )
        if self._last_error is not None:
            log.info("history_prune_recovered", after=self._last_error)
            self._last_error = None
        return PruneResult(
            tables=tuple(t.result() for t in tallies),
            seconds=round(time.perf_counter() - began, 3),
            stopped=stopped,
        )

    async def _prune_tables(
        self, conn: Conn, plan: list[tuple[str, datetime]], tallies: list[Tally]
    ) -> bool:
        """Prune each planned table in turn; True if stopped (or leadership lost) early."""
        for table, cutoff in plan:
            if not self._keep_going():
                return True
            tally = Tally(table, cutoff)
            tallies.append(tally)
            policy = BatchPolicy(self._settings.prune_batch_rows, self._pause)
            prune = prune_ping_history if table == "ping_history" else prune_by_timestamp
            finished = await prune(conn, tally, policy, self._keep_going)
            self._log(tally.result())
            if not finished:
                return True
        return False

    def _keep_going(self) -> bool:
        return not self._stopping and self._is_leader()

    def _log(self, done: TablePrune) -> None:
        log.info(
            "history_pruned",
            table=done.table,
            rows=done.rows,
            batches=done.batches,
            seconds=done.seconds,
            longest_batch_ms=round(done.longest_batch_ms, 1),
            cutoff=done.cutoff.isoformat(),
        )

    def _failed(self, exc: BaseException) -> None:
        """Log a failure once per kind until a run succeeds again."""
        kind = type(exc).__name__
        if kind == self._last_error:
            return
        self._last_error = kind
        log.warning(
            "history_prune_failed",
            kind=kind,
            reason=str(exc) or kind,
            action="retrying at the next interval",
        )
