"""The leader's hourly rollup of ping_history into ping_rollup_hourly (migration 004).

Each run, under an advisory lock of its own, takes the rows with id above the watermark
(ping_rollup_state.rolled_up_to_id) in chunks of ids, recomputes from ping_history every
(peer, hour) they touch, upserts those rows and moves the watermark to the end of the
chunk, all in one transaction per chunk. Rows are taken by id, not time, so that rows
replayed late from a spool (old timestamps, new ids) re-roll the hours they fall in.

The watermark never passes a row that is not rolled:

* it stops just below the first row (by id) of an hour that has not yet ended (hour end
  later than now - GRACE); that row and everything after it wait for a later run;
* ids come from a sequence and commit out of order, so a run first waits until every
  transaction that was writing when it read max(id) has ended (IN_FLIGHT_TIMEOUT_S, else
  the run is skipped as "in_flight"): an id below max(id) cannot then still appear.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from clawd.config.settings import Settings
from clawd.core.errors import DatabaseUnavailable
from clawd.core.lock_ids import ROLLUP_LOCK_ID
from clawd.core.model import utcnow
from clawd.core.periodic import Periodic
from clawd.keep.history import hourly
from clawd.keep.retention.dbjob import DB_ERRORS, FailureLog, LeaderDb, advisory_lock
from clawd.keep.store.migrations import Conn
from clawd.keep.store.pg_errors import TRANSIENT

log = structlog.get_logger("clawd.keep.history.rollup")


# An hour is rolled once it ended this long ago: pings stamped just before the hour's end
# are still being written for a moment after it.
GRACE = timedelta(minutes=2)
# ~1.5 days of a 1,000-peer fleet pinged every 4 min: one transaction of a few seconds.
CHUNK_IDS = 500_000
FIRST_ROLL_SECONDS = 60.0
SETTLE_S = 0.2
IN_FLIGHT_TIMEOUT_S = 10.0

WATERMARK = "SELECT rolled_up_to_id FROM ping_rollup_state"
SET_WATERMARK = "UPDATE ping_rollup_state SET rolled_up_to_id = $1"
TOP_ID = "SELECT coalesce(max(id), 0) FROM ping_history"
WRITERS = "SELECT coalesce(array_agg(x::text), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) x"
STILL_RUNNING = """
SELECT coalesce(array_agg(x), '{}') FROM unnest($1::text[]) AS x
WHERE pg_xact_status(x::xid8) = 'in progress'
"""
NEXT_ID = "SELECT min(id) FROM ping_history WHERE id > $1"
# $1 < id <= $2: the first row of an hour not yet ended ($3 = that hour's start).
FIRST_OPEN = """
SELECT min(id) FROM ping_history WHERE id > $1 AND id <= $2 AND "timestamp" >= $3
"""
TOUCHED = """
SELECT DISTINCT target_gateway, date_trunc('hour', "timestamp", 'UTC') AS hour
FROM ping_history WHERE id > $1 AND id <= $2
"""
UPSERT = f"""
INSERT INTO ping_rollup_hourly AS r (target_gateway, hour, pings, successes, up_ms,
                                     observed_ms, median_gap_ms, max_ms, latency_hist)
SELECT target_gateway, hour, pings, successes, up_ms, observed_ms, median_gap_ms, max_ms,
       latency_hist
FROM ({hourly.SEGMENTS}) AS s
ON CONFLICT (target_gateway, hour) DO UPDATE
SET pings = excluded.pings, successes = excluded.successes, up_ms = excluded.up_ms,
    observed_ms = excluded.observed_ms, median_gap_ms = excluded.median_gap_ms,
    max_ms = excluded.max_ms, latency_hist = excluded.latency_hist
"""  # noqa: S608 -- SEGMENTS is a constant; every value is a parameter


@dataclass(frozen=True, slots=True)
class RollupResult:
    """One roll_once(): what it rolled, or why it did nothing."""

    # "not_leader", "locked", "not_migrated", "in_flight" or "unavailable"; None when it ran.
    skipped: str | None = None
    hours: int = 0  # (peer, hour) rows recomputed
    ids: int = 0  # how far the watermark moved
    chunks: int = 0
    watermark: int = 0
    # True when rows of an hour not yet ended (or a stop) held the watermark back.
    pending: bool = False
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RollupTuning:
    """How often and in what bites the roll-up runs (tests shrink them)."""

    interval_seconds: float = 300.0
    chunk_ids: int = CHUNK_IDS  # ping_history ids per chunk (one transaction each)
    in_flight_timeout_seconds: float = IN_FLIGHT_TIMEOUT_S  # wait for writers, then skip


DEFAULT_TUNING = RollupTuning()


class RollupMaintainer:
    """Keeps ping_rollup_hourly up to date every interval_seconds, on the leader only."""

    name = "rollup"

    def __init__(
        self,
        db: LeaderDb,
        tuning: RollupTuning = DEFAULT_TUNING,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._tuning = tuning
        self._clock = clock
        self._failures = FailureLog(log, "history_rollup_failed", "history_rollup_recovered")
        self.last_result: RollupResult | None = None
        interval = tuning.interval_seconds
        self._ticker = Periodic(
            self._roll_now,
            interval,
            first_delay=min(interval, FIRST_ROLL_SECONDS),
            # Never let one bad run end the rollup for good.
            catch=(Exception,),
            on_error=self._failures.failed,
        )

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """No setting changes the roll-up (its interval is fixed)."""

    def stop(self) -> None:
        """Ask run() to return; a roll in progress ends after its current chunk."""
        self._ticker.stop()

    async def run(self, ready: asyncio.Event) -> None:
        """Roll every interval_seconds until stop(); the first within FIRST_ROLL_SECONDS."""
        await self._ticker.run(ready)

    async def _roll_now(self) -> None:
        self.last_result = await self.roll_once(self._clock())

    async def roll_once(self, now: datetime) -> RollupResult:
        """Roll every ended hour touched by rows above the watermark; logs one line."""
        began = time.perf_counter()
        result = await self._roll_guarded(now)
        result = dataclasses.replace(result, seconds=round(time.perf_counter() - began, 3))
        if result.skipped in ("not_leader", "not_migrated"):
            log.debug("history_rollup_skipped", reason=result.skipped)
        elif result.error is not None:
            pass  # FailureLog logged it (once per kind of failure)
        elif result.skipped is not None:
            log.info("history_rollup_skipped", reason=result.skipped, watermark=result.watermark)
        else:
            log.info(
                "history_rolled_up",
                hours=result.hours,
                ids=result.ids,
                chunks=result.chunks,
                watermark=result.watermark,
                pending=result.pending,
                seconds=result.seconds,
            )
        return result

    async def _roll_guarded(self, now: datetime) -> RollupResult:
        if not self._db.is_leader():
            return RollupResult(skipped="not_leader")
        try:
            async with self._db.connect() as conn:
                present = await conn.fetchval("SELECT to_regclass('ping_rollup_state') IS NOT NULL")
                if not present:
                    return RollupResult(skipped="not_migrated")
                async with advisory_lock(conn, ROLLUP_LOCK_ID) as ours:
                    if not ours:
                        return RollupResult(skipped="locked")
                    result = await self._roll(conn, now)
        except DB_ERRORS as exc:
            self._failures.failed(exc)
            unavailable = isinstance(exc, (DatabaseUnavailable, *TRANSIENT))
            return RollupResult(
                skipped="unavailable" if unavailable else None, error=str(exc) or type(exc).__name__
            )
        self._failures.succeeded()
        return result

    async def _roll(self, conn: Conn, now: datetime) -> RollupResult:
        start = mark = int(await conn.fetchval(WATERMARK))
        top = int(await conn.fetchval(TOP_ID))
        if top <= mark:
            return RollupResult(watermark=mark)
        if not await self._writers_done(conn):
            return RollupResult(skipped="in_flight", watermark=mark)
        open_from = hourly.hour_of(now - GRACE)
        hours = chunks = 0
        pending = False
        while mark < top:
            if self._ticker.stopping or not self._db.is_leader():
                pending = True
                break
            following = await conn.fetchval(NEXT_ID, mark)
            if following is None:
                break
            # Skip what pruning (or failed inserts) left empty below the next row.
            hi = min(int(following) - 1 + self._tuning.chunk_ids, top)
            async with conn.transaction():
                first_open = await conn.fetchval(FIRST_OPEN, mark, hi, open_from)
                if first_open is not None:
                    hi = int(first_open) - 1
                if hi > mark:
                    touched = await conn.fetch(TOUCHED, mark, hi)
                    segments = [hourly.whole_hour(r[0], r[1]) for r in touched]
                    if segments:
                        await conn.execute(UPSERT, *hourly.params(segments))
                    await conn.execute(SET_WATERMARK, hi)
                    hours += len(segments)
            chunks += 1
            mark = max(mark, hi)
            if first_open is not None:
                pending = True
                break
        return RollupResult(
            hours=hours, ids=mark - start, chunks=chunks, watermark=mark, pending=pending
        )

    async def _writers_done(self, conn: Conn) -> bool:
        """Whether every transaction writing when max(id) was read has ended (bounded wait)."""
        # A transaction takes its id from the sequence a moment before it gets an xid.
        await asyncio.sleep(SETTLE_S)
        running: list[str] = await conn.fetchval(WRITERS)
        deadline = time.monotonic() + self._tuning.in_flight_timeout_seconds
        while running:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
            running = await conn.fetchval(STILL_RUNNING, running)
        return True
