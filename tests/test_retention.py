"""History retention against a real PostgreSQL: exact cut-offs, bounded batches, the leader
only, one pruner per database (advisory lock), and PostgreSQL outages that never raise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers_pg import connect, free_port, make_settings
from pgserver import PgDatabase
from structlog.testing import capture_logs

from clawd.config.features import HistorySettings
from clawd.config.settings import Settings
from clawd.core.lock_ids import MIGRATION_LOCK_ID, PRUNE_LOCK_ID
from clawd.keep.retention.connect import dedicated_connection
from clawd.keep.retention.dbjob import ConnectionFactory, LeaderDb
from clawd.keep.retention.pruner import RetentionPruner
from clawd.keep.retention.result import PruneResult
from clawd.keep.store.migrations import migrate

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TINY = timedelta(microseconds=1)

INSERT_PINGS = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms)
SELECT 'gw-self', 'gw-' || (g % 7), true, t, 5 FROM unnest($1::timestamptz[]) WITH ORDINALITY
    AS u(t, g)
"""


def history(**kwargs: Any) -> HistorySettings:
    values: dict[str, Any] = {"prune_interval_seconds": 0.05, "prune_batch_rows": 100}
    values.update(kwargs)
    return HistorySettings(**values)


def always() -> bool:
    return True


def factory(db: PgDatabase) -> ConnectionFactory:
    return lambda: connect(db)


def pruner(
    db: PgDatabase,
    settings: HistorySettings | None = None,
    is_leader: Callable[[], bool] = always,
    pause: float = 0.0,
) -> RetentionPruner:
    return RetentionPruner(
        settings or history(), LeaderDb(factory(db), is_leader), batch_pause_seconds=pause
    )


@contextlib.asynccontextmanager
async def migrated(db: PgDatabase) -> AsyncIterator[asyncpg.Connection]:
    async with connect(db) as conn:
        await migrate(conn)
        yield conn


async def add_pings(conn: asyncpg.Connection, stamps: list[datetime]) -> None:
    await conn.execute(INSERT_PINGS, stamps)


async def ping_stamps(conn: asyncpg.Connection) -> list[datetime]:
    rows = await conn.fetch('SELECT "timestamp" FROM ping_history ORDER BY "timestamp"')
    return [r["timestamp"] for r in rows]


def spread(start: datetime, end: datetime, n: int) -> list[datetime]:
    """`n` instants from `start` (included) towards `end` (excluded), in order."""
    step = (end - start) / n
    return [start + step * i for i in range(n)]


# --------------------------------------------------------------------------- cut-off


async def test_ping_history_pruned_exactly_at_the_cutoff(pg_db: PgDatabase) -> None:
    cutoff = NOW - 90 * DAY
    async with migrated(pg_db) as conn:
        # A recent row with the lowest id (a late writer): below the id boundary, yet kept.
        await add_pings(conn, [NOW - DAY])
        old = spread(NOW - 120 * DAY, cutoff - DAY, 1_000)
        recent = spread(cutoff + TINY, NOW, 500)
        await add_pings(conn, [*old, cutoff - DAY, cutoff - TINY, cutoff, *recent])
        result = await pruner(pg_db).prune_once(NOW)
        kept = await ping_stamps(conn)

    assert result.skipped is None and result.error is None
    assert result.rows("ping_history") == 1_000 + 2
    assert min(kept) == cutoff
    assert len(kept) == 1 + 1 + 500
    assert [t.table for t in result.tables] == ["ping_history"]  # the others: kept for ever


async def test_nothing_old_deletes_nothing(pg_db: PgDatabase) -> None:
    async with migrated(pg_db) as conn:
        empty = await pruner(pg_db).prune_once(NOW)
        await add_pings(conn, spread(NOW - 10 * DAY, NOW, 300))
        fresh = await pruner(pg_db).prune_once(NOW)
        assert len(await ping_stamps(conn)) == 300
    assert empty.total_rows == fresh.total_rows == 0
    assert fresh.batches == 0


async def test_retention_none_keeps_ping_history(pg_db: PgDatabase) -> None:
    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 400 * DAY, NOW, 200))
        result = await pruner(pg_db, history(retention_days=None)).prune_once(NOW)
        assert len(await ping_stamps(conn)) == 200
    assert result.tables == ()


async def add_incidents_and_audits(conn: asyncpg.Connection, stamps: list[datetime]) -> None:
    await conn.executemany(
        'INSERT INTO incident_log (gateway_id, event_type, details, "timestamp") '
        "VALUES ('gw-a', 'offline', '{}', $1)",
        [(t,) for t in stamps],
    )
    await conn.executemany(
        'INSERT INTO skill_audit (gateway_id, skill_name, action, "timestamp") '
        "VALUES ('gw-a', 'skill', 'install', $1)",
        [(t,) for t in stamps],
    )


async def test_incidents_and_audit_kept_unless_configured(pg_db: PgDatabase) -> None:
    cutoff_incidents, cutoff_audit = NOW - 365 * DAY, NOW - 30 * DAY
    # Out of time order on purpose: these tables are pruned through their timestamp index.
    stamps = [
        *spread(NOW - 800 * DAY, NOW, 250)[::-1],
        cutoff_incidents - TINY,
        cutoff_incidents,
        cutoff_audit - TINY,
        cutoff_audit,
    ]
    async with migrated(pg_db) as conn:
        await add_incidents_and_audits(conn, stamps)
        untouched = await pruner(pg_db).prune_once(NOW)
        assert await conn.fetchval("SELECT count(*) FROM incident_log") == len(stamps)
        assert await conn.fetchval("SELECT count(*) FROM skill_audit") == len(stamps)

        settings = history(incident_retention_days=365, skill_audit_retention_days=30)
        result = await pruner(pg_db, settings).prune_once(NOW)
        incidents = await conn.fetchval('SELECT min("timestamp") FROM incident_log')
        audits = await conn.fetchval('SELECT min("timestamp") FROM skill_audit')
        left = {
            t: await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("incident_log", "skill_audit")
        }

    assert [t.table for t in untouched.tables] == ["ping_history"]
    assert incidents == cutoff_incidents and audits == cutoff_audit
    assert left["incident_log"] == sum(t >= cutoff_incidents for t in stamps)
    assert left["skill_audit"] == sum(t >= cutoff_audit for t in stamps)
    assert result.rows("incident_log") == len(stamps) - left["incident_log"]
    assert result.rows("skill_audit") == len(stamps) - left["skill_audit"]
    # More rows than one batch: several transactions, none over the limit.
    assert all(t.largest_batch_rows <= 100 for t in result.tables)
    (pruned,) = [t for t in result.tables if t.table == "incident_log"]
    assert pruned.batches >= 2


# --------------------------------------------------------------------------- batches


async def test_batches_are_bounded_by_prune_batch_rows(pg_db: PgDatabase) -> None:
    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW - 100 * DAY, 1_050))
        # Gaps in the ids (failed inserts, ON CONFLICT) must not widen a batch.
        await conn.execute("DELETE FROM ping_history WHERE id % 3 = 0")
        old = len(await ping_stamps(conn))
        await add_pings(conn, spread(NOW - 5 * DAY, NOW, 40))
        result = await pruner(pg_db, history(prune_batch_rows=100)).prune_once(NOW)
        assert len(await ping_stamps(conn)) == 40

    (table,) = result.tables
    assert table.rows == old
    assert table.largest_batch_rows == 100
    assert table.batches == -(-old // 100)
    assert table.longest_batch_ms > 0


async def test_losing_leadership_stops_after_the_current_batch(pg_db: PgDatabase) -> None:
    calls = 0

    def leader_for_three_checks() -> bool:
        nonlocal calls
        calls += 1
        return calls <= 3  # prune_once, the table, after the first batch

    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW - 100 * DAY, 1_000))
        result = await pruner(pg_db, is_leader=leader_for_three_checks).prune_once(NOW)
        left = len(await ping_stamps(conn))
    assert result.stopped
    assert result.rows("ping_history") == 200  # lost leadership during the second batch
    assert left == 800


# --------------------------------------------------------------------------- who prunes


async def test_non_leader_does_nothing(pg_db: PgDatabase) -> None:
    def no_connection() -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        raise AssertionError("a non-leader must not even connect")

    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW, 300))
        follower = RetentionPruner(history(), LeaderDb(no_connection, lambda: False))
        result = await follower.prune_once(NOW)
        assert len(await ping_stamps(conn)) == 300
    assert result == PruneResult(skipped="not_leader")


async def test_held_advisory_lock_makes_the_pruner_skip(pg_db: PgDatabase) -> None:
    earlier = NOW - 50 * DAY  # cut-off 140 days before NOW
    async with migrated(pg_db) as conn, connect(pg_db) as other:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW, 200))
        # The migration runner's lock is a different one: it does not stop pruning.
        await other.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        assert (await pruner(pg_db).prune_once(earlier)).rows("ping_history") == 60

        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK_ID)
        skipped = await pruner(pg_db).prune_once(NOW)
        assert len(await ping_stamps(conn)) == 140

        await other.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK_ID)
        after = await pruner(pg_db).prune_once(NOW)
        assert len(await ping_stamps(conn)) == 90
    assert PRUNE_LOCK_ID != MIGRATION_LOCK_ID
    assert skipped == PruneResult(skipped="locked")
    assert after.rows("ping_history") == 50


async def test_two_pruners_at_once_one_skips(pg_db: PgDatabase) -> None:
    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW - 100 * DAY, 1_000))
        # Pauses make each run last >= 0.5 s, so the two surely overlap.
        first, second = (pruner(pg_db, pause=0.05) for _ in range(2))
        results = await asyncio.gather(first.prune_once(NOW), second.prune_once(NOW))
        assert await ping_stamps(conn) == []
        lock_left = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    assert sorted(str(r.skipped) for r in results) == ["None", "locked"]
    assert sum(r.total_rows for r in results) == 1_000
    assert lock_left == 0


# --------------------------------------------------------------------------- outages


async def test_postgres_down_logs_once_and_returns(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg = make_settings(pg_db, tmp_path, port=free_port()).postgres
    down = RetentionPruner(history(), LeaderDb(lambda: dedicated_connection(pg), always))
    with capture_logs() as logs:
        first = await asyncio.wait_for(down.prune_once(NOW), timeout=30)
        second = await asyncio.wait_for(down.prune_once(NOW), timeout=30)
    failures = [e for e in logs if e["event"] == "history_prune_failed"]
    assert first.skipped == second.skipped == "unavailable"
    assert first.error is not None and "connection refused" in first.error
    assert len(failures) == 1
    assert failures[0]["kind"] == "DatabaseUnavailable"
    assert failures[0]["log_level"] == "warning"


async def test_dedicated_connection_prunes(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg = make_settings(pg_db, tmp_path).postgres
    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW, 200))
        leader = RetentionPruner(history(), LeaderDb(lambda: dedicated_connection(pg), always))
        with capture_logs() as logs:
            result = await leader.prune_once(NOW)
        assert len(await ping_stamps(conn)) == 200 - 110
    assert result.rows("ping_history") == 110
    (line,) = [e for e in logs if e["event"] == "history_pruned"]
    assert line["table"] == "ping_history"
    assert line["rows"] == 110
    assert line["batches"] == 2
    assert isinstance(line["seconds"], float)


# --------------------------------------------------------------------------- run()


class FlakyConnect:
    """A connection factory that fails `failures` times (with `error`) before it works."""

    def __init__(self, db: PgDatabase, failures: int, error: Exception) -> None:
        self.db = db
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return connect(self.db)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    "error",
    [ConnectionRefusedError("refused"), RuntimeError("a bug in a connection factory")],
    ids=["unreachable", "unexpected"],
)
async def test_run_survives_failures_and_prunes_when_leader(
    pg_db: PgDatabase, error: Exception
) -> None:
    leading = False
    flaky = FlakyConnect(pg_db, failures=3, error=error)
    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW, 200))
        loop = RetentionPruner(history(), LeaderDb(flaky, lambda: leading), clock=lambda: NOW)
        ready = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(loop.run(ready))
            await asyncio.wait_for(ready.wait(), timeout=1)
            await asyncio.sleep(0.2)  # several intervals as a follower
            assert flaky.calls == 0
            leading = True
            async with asyncio.timeout(10):
                while len(await ping_stamps(conn)) > 90:
                    await asyncio.sleep(0.01)
            loop.stop()
            await asyncio.wait_for(task, timeout=5)
    assert flaky.calls >= 4  # three failures, then (at least) one run that pruned
    events = [e["event"] for e in logs]
    assert events.count("history_prune_failed") == 1
    assert "history_prune_recovered" in events
    assert "history_pruned" in events


async def test_stop_before_the_first_interval_returns_at_once(pg_db: PgDatabase) -> None:
    loop = RetentionPruner(history(prune_interval_seconds=3600), LeaderDb(factory(pg_db), always))
    ready = asyncio.Event()
    task = asyncio.create_task(loop.run(ready))
    await asyncio.wait_for(ready.wait(), timeout=1)
    loop.stop()
    await asyncio.wait_for(task, timeout=2)
    assert loop.last_result is None


async def test_reconfigure_takes_effect_without_restart(pg_db: PgDatabase) -> None:
    async with migrated(pg_db) as conn:
        await add_pings(conn, spread(NOW - 200 * DAY, NOW, 200))
        loop = RetentionPruner(
            history(prune_interval_seconds=3600),
            LeaderDb(factory(pg_db), always),
            clock=lambda: NOW,
        )
        task = asyncio.create_task(loop.run(asyncio.Event()))
        await asyncio.sleep(0.1)
        assert loop.last_result is None
        new = Settings.model_construct(
            history=history(prune_interval_seconds=0.05, retention_days=10)
        )
        await loop.reconfigure(new, frozenset({"history"}))
        await until(lambda: loop.last_result is not None)
        loop.stop()
        await asyncio.wait_for(task, timeout=5)
        assert min(await ping_stamps(conn)) >= NOW - 10 * DAY
