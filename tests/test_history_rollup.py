"""The hourly rollup (migration 004, clawd/keep/history/rollup.py) against a real PostgreSQL:
rolled hours equal live ones, late rows re-roll, the watermark never skips a row, and the
report over rollup + live edges equals the report computed wholly live."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from helpers_pg import connect
from pgserver import PgDatabase

from clawd.core.lock_ids import ROLLUP_LOCK_ID
from clawd.keep.history import hourly, latency
from clawd.keep.history.collect import build_report, cut
from clawd.keep.history.hourly import HOUR, HourTotals
from clawd.keep.history.report import Report
from clawd.keep.history.rollup import GRACE, RollupMaintainer, RollupTuning
from clawd.keep.history.timespec import Window
from clawd.keep.retention.dbjob import LeaderDb
from clawd.keep.store.migrations import Conn, load_migrations, migrate

T0 = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
LATER = T0 + timedelta(days=2)  # "now" for runs that should roll every hour below

# (target, seconds after T0, success, response_ms)
Ping = tuple[str, float, bool, int | None]

INSERT = (
    'INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp",'
    " response_ms) VALUES ('gw-self', $1, $2, $3, $4)"
)


def _rows(pings: Sequence[Ping]) -> list[tuple[str, bool, datetime, int | None]]:
    return [(g, ok, T0 + timedelta(seconds=s), ms) for g, s, ok, ms in pings]


async def _insert(conn: Conn, pings: Sequence[Ping]) -> None:
    await conn.executemany(INSERT, _rows(pings))


def _maintainer(
    db: PgDatabase, leader: bool = True, **kw: float
) -> tuple[RollupMaintainer, Callable[[], AbstractAsyncContextManager[Conn]]]:
    def factory() -> AbstractAsyncContextManager[Conn]:
        return connect(db)

    return RollupMaintainer(LeaderDb(factory, lambda: leader), RollupTuning(**kw)), factory  # type: ignore[arg-type]


@asynccontextmanager
async def _pool(db: PgDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(db.dsn, min_size=3, max_size=3)
    try:
        yield pool
    finally:
        await pool.close()


async def _rollup(conn: Conn) -> dict[tuple[str, datetime], HourTotals]:
    rows = await conn.fetch("SELECT * FROM ping_rollup_hourly")
    return {(r["target_gateway"], r["hour"]): HourTotals.from_row(r) for r in rows}


async def _live_hours(conn: Conn) -> dict[tuple[str, datetime], HourTotals]:
    """Every (peer, hour) of ping_history, computed now as a whole hour."""
    pairs = await conn.fetch(
        "SELECT DISTINCT target_gateway, date_trunc('hour', \"timestamp\", 'UTC') FROM ping_history"
    )
    segments = [hourly.whole_hour(g, h) for g, h in pairs]
    return {(t.gateway_id, t.hour): t for t in await hourly.compute(conn, segments)}


async def _watermark(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT rolled_up_to_id FROM ping_rollup_state"))


async def _both(pool: asyncpg.Pool, window: Window, now: datetime) -> tuple[Report, Report]:
    rolled = await build_report(pool, window, now, path="rollup")
    live = await build_report(pool, window, now, path="live")
    return rolled, live


# --------------------------------------------------------------------------- by hand

# gw-x over two hours. Hour 0: pings at 0 ok, 10 ok, 20 down, 30 ok, 3000 ok; spans 10,
#   10, 10, 2970 and 600 (to the hour's end); gaps 10,10,10,2970 -> m = 10, cap 30:
#   up 10+10+30+30 = 80, down 10, observed 90.
# Hour 1: pings at 3700 ok, 3760 down, 3820 ok (3600..3700 is not observed); spans 60, 60,
#   3380 (to 7200); gaps 60,60 -> m = 60, cap 180: up 60+180 = 240, down 60, observed 300.
# Total: up 320 of 390 = 82.051 %. (One median for the whole window, as before migration
#   004, would be 60 and give 620 of 690.) medianGap = median(10, 60) = 35 s.
# Latencies of the successes: 4 7 12 30 100 300. p50 = 3rd = 12, bucket (10, 13] -> 13;
#   p95 = 6th = 300, bucket (251, 316] -> 316, above the max -> 300.
HAND: list[Ping] = [
    ("gw-x", 0, True, 4),
    ("gw-x", 10, True, 12),
    ("gw-x", 20, False, None),
    ("gw-x", 30, True, 30),
    ("gw-x", 3000, True, 100),
    ("gw-x", 3700, True, 7),
    ("gw-x", 3760, False, None),
    ("gw-x", 3820, True, 300),
]


async def test_two_hours_by_hand_live_and_rolled(pg_db: PgDatabase) -> None:
    window = Window(T0, T0 + 2 * HOUR)
    async with connect(pg_db) as conn, _pool(pg_db) as pool:
        await migrate(conn)
        await _insert(conn, HAND)
        before, _ = await _both(pool, window, LATER)
        exact = await build_report(pool, window, LATER)  # never rolled: the exact path
        maintainer, _ = _maintainer(pg_db)
        result = await maintainer.roll_once(LATER)
        assert (result.skipped, result.hours, result.pending) == (None, 2, False)
        after, live = await _both(pool, window, LATER)
        auto = await build_report(pool, window, LATER)
    for report in (before, after, live):
        (p,) = report.peers
        assert (p.pings, p.successes) == (8, 6)
        assert (p.up_s, p.observed_s) == (320.0, 390.0)
        assert p.availability_pct == pytest.approx(100 * 320 / 390)
        assert p.median_gap_s == 35.0
        assert (p.p50_ms, p.p95_ms, p.max_ms) == (13, 300, 300)
    # Whole-window: gaps 10,10,10,2970,700,60,60 -> m = 60, cap 180; spans 10, 10, 10
    # down, 180, 180, 60, 60 down, 180: up 620 of 690; exact p50 = 12.
    (p,) = exact.peers
    assert (p.up_s, p.observed_s, p.median_gap_s) == (620.0, 690.0, 60.0)
    assert (p.p50_ms, p.p95_ms, p.max_ms) == (12, 300, 300)
    assert auto.peers == after.peers  # once rolled, auto takes the rollup


# --------------------------------------------------------------------------- random


def _history(rng: random.Random, peers: int, hours: int) -> list[Ping]:
    pings: list[Ping] = []
    for n in range(peers):
        gap = rng.choice([7.0, 30.0, 240.0, 1500.0])
        t = rng.uniform(0, gap)
        while t < hours * 3600:
            ok = rng.random() > 0.1
            pings.append((f"gw-{n}", round(t, 3), ok, rng.randint(0, 12_000) if ok else None))
            # Now and then the monitor goes away for a while.
            t += gap * rng.uniform(0.5, 1.5) + (
                rng.uniform(600, 5000) if rng.random() < 0.01 else 0
            )
    rng.shuffle(pings)  # ids in no particular time order: like spool replays
    return pings


def _reference(
    pings: Sequence[Ping], window: Window, until: datetime
) -> tuple[dict[str, tuple[float, float]], int]:
    """(up, observed) ms per peer straight from report.py's definition, and the pieces."""
    pieces = cut(window, until)
    spans = list(pieces.edges)
    if pieces.full is not None:
        first, last = pieces.full
        hours = int((last - first) / HOUR)
        spans += [(first + i * HOUR, first + i * HOUR, first + (i + 1) * HOUR,
                   first + (i + 1) * HOUR) for i in range(hours)]  # fmt: skip
    up: dict[str, float] = {}
    observed: dict[str, float] = {}
    for gw in sorted({p[0] for p in pings}):
        times = sorted((T0 + timedelta(seconds=s), ok) for g, s, ok, _ in pings if g == gw)
        for _, lo, hi, e in spans:
            inside = [(t, ok) for t, ok in times if lo <= t < hi]
            if not inside:
                continue
            ends = [t for t, _ in inside[1:]] + [e]
            held = [
                max((min(n, e) - t).total_seconds(), 0.0)
                for (t, _), n in zip(inside, ends, strict=True)
            ]
            gaps = sorted(held[:-1])
            cap = 3 * statistics.median(gaps) if gaps else 0.0
            capped = [min(h, cap) for h in held]
            up[gw] = up.get(gw, 0) + round(
                1000 * sum(c for c, (_, ok) in zip(capped, inside, strict=True) if ok)
            )
            observed[gw] = observed.get(gw, 0) + round(1000 * sum(capped))
    return {g: (up[g], observed[g]) for g in up if observed[g] > 0}, len(spans)


def _same(a: Report, b: Report) -> None:
    assert [p.gateway_id for p in a.peers] == [p.gateway_id for p in b.peers]
    for x, y in zip(a.peers, b.peers, strict=True):
        assert x == y, x.gateway_id


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rollup_equals_live_for_random_histories(pg_db: PgDatabase, seed: int) -> None:
    rng = random.Random(seed)
    history = _history(rng, peers=6, hours=8)
    half = len(history) // 2
    maintainer, _ = _maintainer(pg_db, chunk_ids=max(1, len(history) // 7))
    async with connect(pg_db) as conn, _pool(pg_db) as pool:
        await migrate(conn)
        await _insert(conn, history[:half])
        await maintainer.roll_once(LATER)
        await _insert(conn, history[half:])  # late rows for hours already rolled
        windows = [
            Window(T0, T0 + 8 * HOUR),
            Window(T0 + timedelta(minutes=17), T0 + timedelta(hours=5, minutes=41)),
            Window(T0 + timedelta(hours=2), T0 + timedelta(hours=2, minutes=30)),
            Window(T0 - HOUR, T0 + 10 * HOUR),
        ]
        nows = [LATER, T0 + timedelta(hours=3, minutes=12)]
        for window in windows:
            for now in nows:
                _same(*await _both(pool, window, now))  # half rolled, half live
        result = await maintainer.roll_once(LATER)
        assert result.skipped is None and result.watermark == await conn.fetchval(
            "SELECT max(id) FROM ping_history"
        )
        assert await _rollup(conn) == await _live_hours(conn)
        for window in windows:
            for now in nows:
                rolled, live = await _both(pool, window, now)
                _same(rolled, live)
                expected, pieces = _reference(history, window, min(window.end, now))
                found = {
                    p.gateway_id: (1000 * p.up_s, 1000 * p.observed_s)
                    for p in rolled.peers
                    if p.observed_s > 0
                }
                # Whole ms per hour, rounded from float8 sums: at most 1 ms off per hour.
                assert set(found) == set(expected)
                for g, (up, observed) in expected.items():
                    assert found[g][0] == pytest.approx(up, abs=pieces)
                    assert found[g][1] == pytest.approx(observed, abs=pieces)


# --------------------------------------------------------------------------- watermark


async def test_late_rows_re_roll_their_old_hours(pg_db: PgDatabase) -> None:
    maintainer, _ = _maintainer(pg_db)
    async with connect(pg_db) as conn:
        await migrate(conn)
        await _insert(conn, HAND)
        await maintainer.roll_once(LATER)
        mark = await _watermark(conn)
        # A spool replay after an outage: an old timestamp, a new id.
        await _insert(conn, [("gw-x", 40, False, None)])
        result = await maintainer.roll_once(LATER)
        assert (result.hours, result.watermark) == (1, mark + 1)
        rolled = await _rollup(conn)
        assert rolled[("gw-x", T0)].pings == 6
        assert rolled == await _live_hours(conn)


async def test_the_open_hour_is_never_rolled(pg_db: PgDatabase) -> None:
    maintainer, _ = _maintainer(pg_db)
    now = T0 + HOUR + GRACE / 2  # hour 0 ended, but less than GRACE ago
    async with connect(pg_db) as conn:
        await migrate(conn)
        await _insert(conn, [p for p in HAND if p[1] < 3600])
        first_open = await conn.fetchval("SELECT max(id) FROM ping_history")
        await _insert(conn, [("gw-y", 3599, True, 5)])
        await _insert(conn, [p for p in HAND if p[1] >= 3600])
        result = await maintainer.roll_once(now)
        assert (result.hours, result.watermark, result.pending) == (0, 0, True)
        result = await maintainer.roll_once(T0 + HOUR + GRACE)
        assert result.pending and result.watermark == first_open + 1
        assert set(await _rollup(conn)) == {("gw-x", T0), ("gw-y", T0)}
        result = await maintainer.roll_once(T0 + 2 * HOUR + GRACE)
        assert not result.pending and set(await _rollup(conn)) == {
            ("gw-x", T0),
            ("gw-y", T0),
            ("gw-x", T0 + HOUR),
        }
        assert await _rollup(conn) == await _live_hours(conn)


async def test_the_watermark_waits_for_uncommitted_lower_ids(pg_db: PgDatabase) -> None:
    maintainer, _ = _maintainer(pg_db, in_flight_timeout_seconds=0.3)
    async with connect(pg_db) as conn, connect(pg_db) as slow:
        await migrate(conn)
        tx = slow.transaction()
        await tx.start()
        await _insert(slow, [("gw-x", 0, True, 4)])  # takes the lower id, commits last
        await _insert(conn, [p for p in HAND if p[1] > 0])
        result = await maintainer.roll_once(LATER)
        assert (result.skipped, result.watermark) == ("in_flight", 0)
        assert await _rollup(conn) == {}
        await tx.commit()
        result = await maintainer.roll_once(LATER)
        assert result.skipped is None
        assert result.watermark == await conn.fetchval("SELECT max(id) FROM ping_history")
        assert (await _rollup(conn))[("gw-x", T0)].pings == 5
        assert await _rollup(conn) == await _live_hours(conn)


async def test_a_second_maintainer_skips_while_one_holds_the_lock(pg_db: PgDatabase) -> None:
    first, _ = _maintainer(pg_db)
    second, _ = _maintainer(pg_db)
    async with connect(pg_db) as conn, connect(pg_db) as holder:
        await migrate(conn)
        await _insert(conn, HAND)
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", ROLLUP_LOCK_ID)
        result = await second.roll_once(LATER)
        assert (result.skipped, result.hours) == ("locked", 0)
        assert await _watermark(conn) == 0
        await holder.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK_ID)
        results = await asyncio.gather(first.roll_once(LATER), second.roll_once(LATER))
        assert sorted(r.hours for r in results) == [0, 2]
        assert {r.skipped for r in results} <= {None, "locked"}
        assert await _rollup(conn) == await _live_hours(conn)


async def test_a_non_leader_does_nothing(pg_db: PgDatabase) -> None:
    maintainer, _ = _maintainer(pg_db, leader=False)
    async with connect(pg_db) as conn:
        await migrate(conn)
        await _insert(conn, HAND)
        result = await maintainer.roll_once(LATER)
        assert result.skipped == "not_leader"
        assert (await _watermark(conn), await _rollup(conn)) == (0, {})


async def test_run_rolls_and_stops(pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clawd.keep.history.rollup.FIRST_ROLL_SECONDS", 0.0)
    maintainer, _ = _maintainer(pg_db)
    async with connect(pg_db) as conn:
        await migrate(conn)
        await _insert(conn, HAND)
        ready = asyncio.Event()
        task = asyncio.create_task(maintainer.run(ready))
        for _ in range(200):
            if maintainer.last_result is not None:
                break
            await asyncio.sleep(0.05)
        maintainer.stop()
        await asyncio.wait_for(task, timeout=10)
        assert ready.is_set()
        assert maintainer.last_result is not None and maintainer.last_result.hours == 2


# --------------------------------------------------------------------------- no database


def test_cut_whole_hours_and_edges() -> None:
    w = Window(T0 + timedelta(minutes=10), T0 + timedelta(hours=3, minutes=20))
    now = T0 + timedelta(hours=2, minutes=5)
    pieces = cut(w, now)
    assert pieces.full == (T0 + HOUR, T0 + 2 * HOUR)
    assert pieces.edges == (
        (T0, w.start, T0 + HOUR, T0 + HOUR),
        (T0 + 2 * HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR, now),
        (T0 + 3 * HOUR, T0 + 3 * HOUR, w.end, now),
    )
    aligned = cut(Window(T0, T0 + 2 * HOUR), T0 + 2 * HOUR)  # until = min(end, now)
    assert (aligned.full, aligned.edges) == ((T0, T0 + 2 * HOUR), ())
    a, b = T0 + timedelta(minutes=5), T0 + timedelta(minutes=50)
    inside = cut(Window(a, b), b)
    assert (inside.full, inside.edges) == (None, ((T0, a, b, b),))


def test_percentile_from_buckets_is_never_low_and_at_most_max_relative_error_high() -> None:
    assert latency.BUCKETS == 39
    assert round(latency.MAX_RELATIVE_ERROR, 4) == 0.2588
    for v in range(1, 10_001):
        hist = [0] * latency.BUCKETS
        hist[latency.bucket_of(v)] = 1
        r = latency.percentile(hist, 0.5, 20_000)
        assert r is not None and v <= r <= v * (1 + latency.MAX_RELATIVE_ERROR), v
    hist = [0] * latency.BUCKETS
    hist[latency.bucket_of(30)] += 2
    hist[latency.bucket_of(12_345)] += 1
    assert latency.percentile(hist, 0.5, 12_345) == 32
    assert latency.percentile(hist, 0.95, 12_345) == 12_345  # overflow: the max
    assert latency.percentile([0] * latency.BUCKETS, 0.5, None) is None


async def test_migration_004_runs_twice(pg_db: PgDatabase) -> None:
    migrations = await asyncio.to_thread(load_migrations)
    sql = next(m.sql for m in migrations if m.name == "004-ping-rollup.sql")
    async with connect(pg_db) as conn:
        await migrate(conn)
        await _insert(conn, HAND)
        await _maintainer(pg_db)[0].roll_once(LATER)
        async with conn.transaction():  # as psql -f would, or the runner
            await conn.execute(sql)
        assert await _watermark(conn) > 0 and len(await _rollup(conn)) == 2
