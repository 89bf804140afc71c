"""Write stalls while the retention pruner deletes 1,000,000 old ping rows.

A throwaway PostgreSQL 15 cluster (``tests/pgserver.py``) runs with production durability
(``fsync``, ``full_page_writes``, ``synchronous_commit`` on). For each write rate, a fresh
database with clawd's migrations gets ``old_rows`` ping rows 91 to 120 days old and
``recent_rows`` rows of the last 89 days (one ``INSERT … SELECT generate_series`` each, with
a client_key UUID per row, as the daemon writes them), then ``VACUUM ANALYZE`` and a
``CHECKPOINT``.

The daemon's real write path then runs: ``FleetRepository.record_pings`` (1,000 peers'
pings, submitted every 100 ms) → ``PgSink`` (queue → spool → ``PgStore.apply``, one
transaction per batch). Every ``PgStore.apply`` — pool acquire, COPY into the stage table,
``INSERT … ON CONFLICT``, COMMIT — is timed: that is the write a pruner could stall.

* baseline: the write load alone for ``baseline_s`` seconds;
* pruning: the same load while ``RetentionPruner.prune_once`` (retention 90 days, default
  ``prune_batch_rows`` 5,000, 50 ms between batches, its own connection) deletes every old
  row, in the same event loop, as in the daemon.

Afterwards no row older than the cut-off may remain and every recent and newly written row
must be there. Run: ``.venv/bin/python -m bench.prune_stall [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from clawd.config.load import settings_from_data
from clawd.config.settings import Settings, self_instance
from clawd.core.logs import configure_logging
from clawd.core.model import Ping
from clawd.keep.retention.connect import dedicated_connection
from clawd.keep.retention.dbjob import LeaderDb
from clawd.keep.retention.pruner import RetentionPruner
from clawd.keep.retention.result import PruneResult
from clawd.keep.store.json_store import JsonStore
from clawd.keep.store.migrations import migrate
from clawd.keep.store.ops import PingBatch, WriteOp
from clawd.keep.store.pg_sink import PgSink
from clawd.keep.store.pg_store import PgStore
from clawd.keep.store.repository import FleetRepository
from clawd.keep.store.spool import Spool

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, PgDatabase, PgServer  # noqa: E402

SECTION = "prune-stall"

PEERS = 1_000
TICK_S = 0.1  # the load generator submits this often
RETENTION_DAYS = 90
BATCH_PAUSE_S = 0.05
GOAL_STALL_MS = 100.0
CONNECT_TIMEOUT_S = 30.0
PRUNE_TIMEOUT_S = 900.0

LOAD_SQL = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms,
                          client_key)
SELECT 'gw-' || lpad((g % 50)::text, 4, '0'), 'gw-' || lpad((g % $4)::text, 4, '0'),
       g % 17 <> 0, $1::timestamptz + ($2::timestamptz - $1::timestamptz) * (g::float8 / $3),
       CASE WHEN g % 17 <> 0 THEN 3 + g % 40 END, gen_random_uuid()
FROM generate_series(0, $3 - 1) AS g
"""


@dataclass(frozen=True)
class Plan:
    old_rows: int
    recent_rows: int
    rates: tuple[int, ...]  # ping rows per second written during each measurement
    baseline_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(old_rows=100_000, recent_rows=10_000, rates=(2_000,), baseline_s=4.0)
        return cls(old_rows=1_000_000, recent_rows=100_000, rates=(100, 2_000), baseline_s=10.0)


@dataclass(frozen=True)
class Latency:
    """Commit latencies of one phase, in milliseconds."""

    commits: int
    rows: int
    p50: float
    p99: float
    max: float
    over_goal: int

    @classmethod
    def of(cls, samples: Sequence[tuple[float, int]]) -> Latency:
        ms = sorted(s * 1000 for s, _ in samples) or [0.0]
        return cls(
            commits=len(samples),
            rows=sum(n for _, n in samples),
            p50=_percentile(ms, 50),
            p99=_percentile(ms, 99),
            max=ms[-1],
            over_goal=sum(m > GOAL_STALL_MS for m in ms),
        )


@dataclass(frozen=True)
class RateResult:
    rate: int
    baseline: Latency
    pruning: Latency
    after: Latency
    prune: PruneResult
    prune_wall_s: float


@dataclass
class Recorder:
    """Where TimedPgStore puts (seconds, rows) of each apply(), per phase."""

    phase: str = "warmup"
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def add(self, seconds: float, rows: int) -> None:
        self.samples.setdefault(self.phase, []).append((seconds, rows))


def _percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class TimedPgStore(PgStore):
    """PgStore whose apply() (one write transaction) is timed into a Recorder."""

    recorder: Recorder

    async def apply(self, ops: Sequence[WriteOp]) -> None:
        """As PgStore.apply; records its wall time and row count."""
        began = time.perf_counter()
        await super().apply(ops)
        rows = sum(len(op.pings) for op in ops if isinstance(op, PingBatch))
        self.recorder.add(time.perf_counter() - began, rows)


# --------------------------------------------------------------------------- pieces


def bench_settings(db: PgDatabase, home: Path) -> Settings:
    return settings_from_data(
        {
            "backend": "postgres",
            "home": str(home),
            "postgres": {
                "host": db.host,
                "port": db.port,
                "database": db.database,
                "user": db.user,
                "password": db.password,
            },
            "instance": {"gatewayId": "bench-gw", "name": "bench-gw"},
            "history": {"retentionDays": RETENTION_DAYS},
        },
        environ={},
    )


def build_timed_repository(settings: Settings, recorder: Recorder) -> FleetRepository:
    """build_repository(), with every PgStore.apply() timed."""
    pg = settings.postgres

    async def connect() -> PgStore:
        store = await TimedPgStore.open(pg)
        assert isinstance(store, TimedPgStore)
        store.recorder = recorder
        return store

    sink = PgSink(connect, Spool(settings.spool_dir), settings.storage)
    return FleetRepository(JsonStore(settings.home), self_instance(settings), sink)


async def load(db: PgDatabase, plan: Plan, now: datetime) -> None:
    conn = await asyncpg.connect(db.dsn)
    try:
        await migrate(conn)
        day = timedelta(days=1)
        await conn.execute(LOAD_SQL, now - 120 * day, now - 91 * day, plan.old_rows, PEERS)
        await conn.execute(
            LOAD_SQL, now - 89 * day, now - timedelta(minutes=1), plan.recent_rows, PEERS
        )
        await conn.execute("VACUUM ANALYZE ping_history")
    finally:
        await conn.close()


async def write_load(repo: FleetRepository, rate: int, stop: asyncio.Event) -> int:
    """record_pings() at `rate` rows/s, round-robin over PEERS targets, until `stop`."""
    per_tick, carry, sent, peer = rate * TICK_S, 0.0, 0, 0
    next_tick = time.perf_counter()
    while not stop.is_set():
        carry += per_tick
        n, carry = int(carry), carry - int(carry)
        now = datetime.now(UTC)
        pings = []
        for _ in range(n):
            pings.append(
                Ping("bench-gw", f"gw-{peer:04d}", True, now, 5 + peer % 40),
            )
            peer = (peer + 1) % PEERS
        await repo.record_pings(pings)
        sent += n
        next_tick += TICK_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_tick - time.perf_counter()))
    return sent


async def measure_rate(server: PgServer, plan: Plan, rate: int, work_dir: Path) -> RateResult:
    name = f"prune_{rate}"
    await asyncio.to_thread(server.create_database, name, TEST_DB_USER)
    db = server.database(name, TEST_DB_USER, TEST_DB_PASSWORD)
    try:
        now = datetime.now(UTC)
        began = time.perf_counter()
        await load(db, plan, now)
        # Start both phases with no checkpoint debt from the load.
        await asyncio.to_thread(server.execute, "CHECKPOINT")
        print(
            f"  rate {rate}/s: loaded {plan.old_rows + plan.recent_rows:,} rows in "
            f"{time.perf_counter() - began:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        settings = bench_settings(db, work_dir / name)
        recorder = Recorder()
        repo = build_timed_repository(settings, recorder)
        await repo.open()
        runner = asyncio.create_task(repo.run(asyncio.Event()), name="repository")
        stop = asyncio.Event()
        writer: asyncio.Task[int] | None = None
        try:
            sink = repo.sink
            assert sink is not None
            deadline = time.perf_counter() + CONNECT_TIMEOUT_S
            while not sink.connected:
                if time.perf_counter() > deadline:
                    raise RuntimeError("the sink did not connect to PostgreSQL")
                await asyncio.sleep(0.01)
            await repo.flush()
            writer = asyncio.create_task(write_load(repo, rate, stop), name="writer")
            await asyncio.sleep(1.0)  # warm-up: pool, stage table, first batches
            recorder.phase = "baseline"
            await asyncio.sleep(plan.baseline_s)
            recorder.phase = "pruning"
            pruner = RetentionPruner(
                settings.history,
                LeaderDb(lambda: dedicated_connection(settings.postgres), lambda: True),
                batch_pause_seconds=BATCH_PAUSE_S,
            )
            began = time.perf_counter()
            result = await asyncio.wait_for(pruner.prune_once(datetime.now(UTC)), PRUNE_TIMEOUT_S)
            prune_wall = time.perf_counter() - began
            recorder.phase = "after"
            await asyncio.sleep(plan.baseline_s)  # autovacuum of the dead rows comes now
            stop.set()
            sent = await writer
            await asyncio.wait_for(repo.flush(), 60.0)
        finally:
            stop.set()
            if writer is not None and not writer.done():
                writer.cancel()
            repo.stop()
            try:
                await asyncio.wait_for(runner, 60.0)
            finally:
                await repo.close()
        if result.error is not None or result.skipped is not None:
            raise RuntimeError(f"prune failed: {result}")
        await check(db, plan, sent, result)
        return RateResult(
            rate=rate,
            baseline=Latency.of(recorder.samples.get("baseline", [])),
            pruning=Latency.of(recorder.samples.get("pruning", [])),
            after=Latency.of(recorder.samples.get("after", [])),
            prune=result,
            prune_wall_s=prune_wall,
        )
    finally:
        await asyncio.to_thread(server.drop_database, name)


async def check(db: PgDatabase, plan: Plan, sent: int, result: PruneResult) -> None:
    conn = await asyncpg.connect(db.dsn)
    try:
        total = int(await conn.fetchval("SELECT count(*) FROM ping_history"))
        cutoff = result.tables[0].cutoff
        old = int(
            await conn.fetchval('SELECT count(*) FROM ping_history WHERE "timestamp" < $1', cutoff)
        )
    finally:
        await conn.close()
    if old or result.rows("ping_history") != plan.old_rows or total != plan.recent_rows + sent:
        raise RuntimeError(
            f"after pruning: {old} old rows left, {result.rows('ping_history')} deleted "
            f"(expected {plan.old_rows}), {total} rows (expected {plan.recent_rows + sent})"
        )


async def measure(plan: Plan, server: PgServer, work_dir: Path) -> list[RateResult]:
    results = []
    for rate in plan.rates:
        r = await measure_rate(server, plan, rate, work_dir)
        print(
            f"  rate {rate}/s: baseline max {r.baseline.max:.1f} ms p99 {r.baseline.p99:.1f}; "
            f"pruning max {r.pruning.max:.1f} ms p99 {r.pruning.p99:.1f}; "
            f"after max {r.after.max:.1f} ms p99 {r.after.p99:.1f}; "
            f"{r.prune.rows('ping_history'):,} rows pruned in {r.prune_wall_s:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        results.append(r)
    return results


# --------------------------------------------------------------------------- report


def render(results: Sequence[RateResult], plan: Plan, machine: str, total_s: float) -> str:
    lines = [
        "## Write stalls while pruning ping_history",
        "",
        machine,
        "",
        f"{plan.old_rows:,} rows past the {RETENTION_DAYS}-day retention + "
        f"{plan.recent_rows:,} recent; writes through `FleetRepository` → `PgSink` at each rate "
        f"({plan.baseline_s:.0f} s baseline, then for as long as the prune runs, then "
        f"{plan.baseline_s:.0f} s after it, while autovacuum reclaims the dead rows). "
        f"Latency = one `PgStore.apply` (acquire, COPY → stage, `INSERT … ON CONFLICT`, "
        f"COMMIT); goal: none over {GOAL_STALL_MS:.0f} ms.",
        "",
        "| figure | goal | measured | ratio |",
        "|---|---|---|---|",
    ]
    for r in results:
        worst = r.pruning.max
        mark = "✓" if worst <= GOAL_STALL_MS else "✗"
        lines.append(
            f"| longest write while pruning {r.prune.rows('ping_history'):,} rows at "
            f"{r.rate:,} rows/s, ms (same load without pruning: {r.baseline.max:.1f}) | "
            f"≤ {GOAL_STALL_MS:.0f} | {worst:.1f} | {worst / GOAL_STALL_MS:.2f} {mark} |"
        )
    lines += [
        "",
        "| rate | phase | commits | rows | p50 ms | p99 ms | max ms | > 100 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        phases = (("baseline", r.baseline), ("pruning", r.pruning), ("after", r.after))
        for label, lat in phases:
            ok = "✓" if lat.over_goal == 0 else "✗"
            lines.append(
                f"| {r.rate:,} rows/s | {label} | {lat.commits:,} | {lat.rows:,} | "
                f"{lat.p50:.1f} | {lat.p99:.1f} | {lat.max:.1f} | {lat.over_goal} {ok} |"
            )
    lines += [
        "",
        "| rate | rows pruned | prune time s | rows/s deleted | batches | longest batch ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.prune.tables[0]
        lines.append(
            f"| {r.rate:,} rows/s | {p.rows:,} | {r.prune_wall_s:.1f} | "
            f"{p.rows / r.prune_wall_s:,.0f} | {p.batches:,} | {p.longest_batch_ms:.1f} |"
        )
    lines += [
        "",
        f"Pruner: `RetentionPruner.prune_once` with `prune_batch_rows` 5,000 and "
        f"{BATCH_PAUSE_S * 1000:.0f} ms between batches (each batch its own transaction, by "
        "primary-key range), on its own connection, in the writers' event loop. Checked "
        "afterwards: no row older than the cut-off, every recent and newly written row present. "
        f"Whole benchmark: {total_s:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def machine_line(server: PgServer) -> str:
    version = str(server.fetchval("SHOW server_version"))
    settings = ", ".join(
        f"{g}={server.fetchval(f'SHOW {g}')}"
        for g in ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers")
    )
    return (
        f"Machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"PostgreSQL {version} (local, TCP 127.0.0.1; {settings}), "
        f"{platform.system()} {platform.release()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
    )


def run(quick: bool = False) -> str:
    """Run the benchmark; returns the markdown section body."""
    configure_logging("error", stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    plan = Plan.for_mode(quick)
    server = PgServer(
        synchronous_commit=True,
        # PgServer turns these off for tests; a later -c wins, so production durability it is.
        extra_options=("-c fsync=on", "-c full_page_writes=on"),
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clawd-bench-prune-") as tmp:
        try:
            print("starting PostgreSQL …", file=sys.stderr, flush=True)
            server.start()
            server.create_role(TEST_DB_USER, TEST_DB_PASSWORD)
            machine = machine_line(server)
            results = asyncio.run(measure(plan, server, Path(tmp)))
        finally:
            server.cleanup()
    return render(results, plan, machine, time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prune_stall", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200,000 old rows instead of 1M")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
