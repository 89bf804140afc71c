"""The leader's periodic pruning of PostgreSQL history, one clawd at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from clawd.config.features import HistorySettings
from clawd.config.settings import Settings
from clawd.core.errors import DatabaseUnavailable
from clawd.core.lock_ids import PRUNE_LOCK_ID
from clawd.core.model import utcnow
from clawd.core.periodic import Periodic
from clawd.keep.retention.batches import (
    BatchPolicy,
    Tally,
    prune_by_timestamp,
    prune_ping_history,
)
from clawd.keep.retention.dbjob import DB_ERRORS, FailureLog, LeaderDb, advisory_lock
from clawd.keep.retention.result import PruneResult, TablePrune
from clawd.keep.store.migrations import Conn
from clawd.keep.store.pg_errors import TRANSIENT

FIRST_PRUNE_SECONDS = 300.0
log = structlog.get_logger("clawd.keep.retention")


DEFAULT_BATCH_PAUSE_S = 0.05


def _plan(settings: HistorySettings, now: datetime) -> list[tuple[str, datetime]]:
    """(table, cut-off) for every table with a retention set, ping_history first."""
    days = {
        "ping_history": settings.retention_days,
        # What each observer saw is kept as long as the incidents it is evidence for.
        "observer_evidence": settings.incident_retention_days,
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
        db: LeaderDb,
        *,
        batch_pause_seconds: float = DEFAULT_BATCH_PAUSE_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._db = db
        self._pause = batch_pause_seconds
        self._clock = clock
        self._failures = FailureLog(log, "history_prune_failed", "history_prune_recovered")
        self.last_result: PruneResult | None = None
        self._last_run = 0.0  # monotonic; set in run()
        # Never let one bad run end pruning for good.
        self._ticker = Periodic(
            self._prune_if_due,
            self._seconds_left,
            catch=(Exception,),
            on_error=self._failures.failed,
        )

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """Use the new history settings from the next batch on; a new interval counts from
        the last run."""
        self._settings = settings.history
        self._ticker.wake()

    def stop(self) -> None:
        """Ask run() to return; a prune in progress ends after its current batch."""
        self._ticker.stop()

    async def run(self, ready: asyncio.Event) -> None:
        """Prune every prune_interval_seconds until stop(); the first within FIRST_PRUNE_SECONDS."""
        # A daemon restarted more often than the interval must still prune.
        interval = self._settings.prune_interval_seconds
        self._last_run = time.monotonic() - interval + min(interval, FIRST_PRUNE_SECONDS)
        await self._ticker.run(ready)

    def _seconds_left(self) -> float:
        return self._last_run + self._settings.prune_interval_seconds - time.monotonic()

    async def _prune_if_due(self) -> None:
        if self._seconds_left() > 0:
            return  # woken by new settings, or the timer was early: wait the rest
        self._last_run = time.monotonic()
        self.last_result = await self.prune_once(self._clock())

    async def prune_once(self, now: datetime) -> PruneResult:
        """Prune if leader and no other clawd is pruning; database errors are logged, not raised."""
        if not self._db.is_leader():
            log.debug("history_prune_skipped", reason="not_leader")
            return PruneResult(skipped="not_leader")
        plan = _plan(self._settings, now)
        if not plan:
            return PruneResult()
        began = time.perf_counter()
        tallies: list[Tally] = []
        try:
            async with self._db.connect() as conn, advisory_lock(conn, PRUNE_LOCK_ID) as ours:
                if not ours:
                    log.info("history_prune_skipped", reason="another clawd is pruning")
                    return PruneResult(skipped="locked")
                stopped = await self._prune_tables(conn, plan, tallies)
        except DB_ERRORS as exc:
            self._failures.failed(exc)
            done = tuple(t.result() for t in tallies)
            unavailable = not tallies and isinstance(exc, (DatabaseUnavailable, *TRANSIENT))
            return PruneResult(
                tables=done,
                seconds=round(time.perf_counter() - began, 3),
                skipped="unavailable" if unavailable else None,
                error=str(exc) or type(exc).__name__,
            )
        self._failures.succeeded()
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
        return not self._ticker.stopping and self._db.is_leader()

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
