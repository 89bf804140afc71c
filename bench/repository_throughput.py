"""Ping-history write throughput: the repository fan-out against raw asyncpg.

Everything runs against a throwaway PostgreSQL 15 cluster (``tests/pgserver.py``) started with
production durability: ``fsync``, ``full_page_writes`` and ``synchronous_commit`` on. Each
measurement gets a fresh database with clawd's migrations applied, so every run inserts into
the same empty ``ping_history`` (with its unique ``client_key`` index and the
``(target_gateway, timestamp)`` index).

Measurements (rows/s = rows / wall-clock seconds until the last write returned):

* raw asyncpg ``copy_records_to_table`` into ``ping_history``, 1,000 rows per COPY;
* raw asyncpg ``COPY`` into the temp stage table + ``INSERT .. ON CONFLICT`` in one transaction
  per 5,000 rows: the exact SQL ``PgStore.apply`` runs, without clawd's Python around it;
* raw ``executemany`` INSERT, 1,000 rows per call;
* single-row INSERTs, each its own transaction;
* ``FleetRepository.record_pings`` in batches of 1,000 as fast as the caller can go, then
  ``flush()`` (PostgreSQL up): the daemon's real path (queue -> spool -> PostgreSQL);
* the same with PostgreSQL stopped (rows go to the on-disk spool), then the spool replay once
  the server is started again.

For the two repository runs a probe task sleeps 10 ms in a loop and records how late each
wake-up is (event-loop lag), and ``time.process_time`` gives the CPU the whole process spent
(all threads) per 100k rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from clawd.config.load import settings_from_data
from clawd.core.logs import configure_logging
from clawd.core.model import Ping
from clawd.keep.store.factory import build_repository
from clawd.keep.store.migrations import migrate
from clawd.keep.store.pg_store import CREATE_PING_STAGE, MERGE_PINGS, PING_COLUMNS, PING_STAGE
from clawd.keep.store.repository import FleetRepository

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, PgDatabase, PgServer  # noqa: E402

SECTION = "repository-throughput"

BATCH = 1_000  # rows per record_pings() / COPY / executemany call
STAGE_BATCH = 5_000  # rows per transaction of the stage+merge baseline (= batch_max_rows)
LAG_INTERVAL = 0.010  # seconds the lag probe sleeps between wake-ups
GOAL_ROWS_PER_S = 50_000
GOAL_LAG_P99_MS = 50.0
WAIT_TIMEOUT = 600.0  # seconds: a flush or replay that takes longer is a failure
CONNECT_TIMEOUT = 30.0  # seconds for the sink's first connection

# The delivery task retries a lost server with exponential backoff (default 1 s doubling to
# 60 s); kept short here so the replay figure measures the replay, not the backoff.
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 0.25

INSERT_PING = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms,
                          client_key)
VALUES ($1, $2, $3, $4, $5, $6)
"""

# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Plan:
    rows: int  # per bulk measurement
    single_rows: int  # for the single-row INSERT baseline
    max_rounds: int
    budget_s: float  # a further round starts only if it is expected to end within this

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(rows=100_000, single_rows=2_000, max_rounds=1, budget_s=50.0)
        return cls(rows=500_000, single_rows=5_000, max_rounds=3, budget_s=260.0)


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Lag:
    """Event-loop lag of one run, in milliseconds."""

    p50: float
    p99: float
    max: float
    samples: int


@dataclass(frozen=True)
class Sample:
    """One timed run."""

    rows: int
    seconds: float
    cpu_seconds: float
    lag: Lag | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu_seconds / self.rows * 100_000


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    rounds: int = 0

    def add(self, name: str, sample: Sample) -> None:
        self.samples.setdefault(name, []).append(sample)


class LagProbe:
    """Sleeps LAG_INTERVAL in a loop and records how late each wake-up is."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            self.late.append(max(0.0, time.perf_counter() - before - LAG_INTERVAL))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lag-probe")

    def mark(self) -> int:
        """A position for stop(since=...): ignore the wake-ups recorded so far."""
        return len(self.late)

    async def stop(self, since: int = 0) -> Lag:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        late = self.late[since:]
        values = sorted(late) or [0.0]
        return Lag(
            p50=_percentile(values, 50) * 1000,
            p99=_percentile(values, 99) * 1000,
            max=values[-1] * 1000,
            samples=len(late),
        )


def _percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """Yields a list that receives (wall seconds, CPU seconds) when the block ends."""
    out: list[float] = []
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out.extend((time.perf_counter() - wall, time.process_time() - cpu))


# --------------------------------------------------------------------------- data


def make_pings(n: int) -> list[Ping]:
    """``n`` pings from one gateway to 50 targets, 10 ms apart, with time-ordered keys."""
    base = datetime(2025, 1, 1, tzinfo=UTC)
    targets = [f"gw-{i:03d}" for i in range(50)]
    step = timedelta(milliseconds=10)
    pings: list[Ping] = []
    for i in range(n):
        ok = i % 17 != 0
        pings.append(
            Ping(
                source_gateway="bench-gw",
                target_gateway=targets[i % 50],
                success=ok,
                timestamp=base + step * i,
                response_ms=3 + i % 40 if ok else None,
            )
        )
    return pings


def ping_records(pings: Sequence[Ping]) -> list[tuple[Any, ...]]:
    return [
        (p.source_gateway, p.target_gateway, p.success, p.timestamp, p.response_ms, p.key)
        for p in pings
    ]


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


# --------------------------------------------------------------------------- server


class Bench:
    """One PostgreSQL cluster and the data every run inserts."""

    def __init__(self, server: PgServer, plan: Plan, work_dir: Path) -> None:
        self.server = server
        self.plan = plan
        self.work_dir = work_dir
        self.pings = make_pings(plan.rows)
        self.records = ping_records(self.pings)
        self.ping_batches = chunks(self.pings, BATCH)
        self._serial = 0

    # ---- fresh databases

    async def fresh_db(self, label: str) -> PgDatabase:
        self._serial += 1
        name = f"bench_{label}_{self._serial}"
        await asyncio.to_thread(self.server.create_database, name, TEST_DB_USER)
        db = self.server.database(name, TEST_DB_USER, TEST_DB_PASSWORD)
        conn = await asyncpg.connect(db.dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        # Start every run with a clean WAL and no pending checkpoint work.
        await asyncio.to_thread(self.server.execute, "CHECKPOINT")
        return db

    async def drop_db(self, db: PgDatabase) -> None:
        await asyncio.to_thread(self.server.drop_database, db.database)

    async def count(self, db: PgDatabase) -> int:
        conn = await asyncpg.connect(db.dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM ping_history"))
        finally:
            await conn.close()

    async def expect_count(self, db: PgDatabase, label: str, rows: int) -> None:
        got = await self.count(db)
        if got != rows:
            raise RuntimeError(f"{label}: ping_history holds {got} rows, expected {rows}")

    # ---- raw asyncpg baselines

    async def _raw(
        self,
        label: str,
        rows: int,
        work: Callable[[asyncpg.Connection], Awaitable[None]],
    ) -> Sample:
        db = await self.fresh_db(label)
        try:
            conn = await asyncpg.connect(db.dsn)
            try:
                with timed() as t:
                    await work(conn)
            finally:
                await conn.close()
            await self.expect_count(db, label, rows)
        finally:
            await self.drop_db(db)
        return Sample(rows, t[0], t[1])

    async def raw_copy(self) -> Sample:
        async def work(conn: asyncpg.Connection) -> None:
            for batch in chunks(self.records, BATCH):
                await conn.copy_records_to_table(
                    "ping_history", records=batch, columns=PING_COLUMNS
                )

        return await self._raw("copy", len(self.records), work)

    async def raw_stage_merge(self) -> Sample:
        async def work(conn: asyncpg.Connection) -> None:
            for batch in chunks(self.records, STAGE_BATCH):
                async with conn.transaction():
                    await conn.execute(CREATE_PING_STAGE)
                    await conn.copy_records_to_table(
                        PING_STAGE, records=batch, columns=PING_COLUMNS
                    )
                    await conn.execute(MERGE_PINGS)

        return await self._raw("stage", len(self.records), work)

    async def raw_executemany(self) -> Sample:
        async def work(conn: asyncpg.Connection) -> None:
            for batch in chunks(self.records, BATCH):
                await conn.executemany(INSERT_PING, batch)

        return await self._raw("executemany", len(self.records), work)

    async def raw_single(self) -> Sample:
        records = self.records[: self.plan.single_rows]

        async def work(conn: asyncpg.Connection) -> None:
            for record in records:
                await conn.execute(INSERT_PING, *record)

        return await self._raw("single", len(records), work)

    # ---- the repository

    def _repository(self, db: PgDatabase, home: Path) -> FleetRepository:
        settings = settings_from_data(
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
                "storage": {
                    "retryInitialSeconds": RETRY_INITIAL_S,
                    "retryMaxSeconds": RETRY_MAX_S,
                },
            },
            environ={},
        )
        return build_repository(settings)

    async def _write_all(self, repo: FleetRepository) -> Sample:
        """record_pings() every batch as fast as possible, then flush(); lag probed."""
        probe = LagProbe()
        probe.start()
        with timed() as t:
            for batch in self.ping_batches:
                await repo.record_pings(batch)
            await asyncio.wait_for(repo.flush(), WAIT_TIMEOUT)
        lag = await probe.stop()
        return Sample(len(self.pings), t[0], t[1], lag)

    async def repository(self) -> Sample:
        db = await self.fresh_db("repo")
        home = Path(tempfile.mkdtemp(prefix="repo-", dir=self.work_dir))
        try:
            repo = self._repository(db, home)
            await repo.open()
            ready = asyncio.Event()
            runner = asyncio.create_task(repo.run(ready), name="repository")
            try:
                await ready.wait()
                assert repo.sink is not None
                # The sink says ready before it connects (writes are spooled meanwhile).
                deadline = time.perf_counter() + CONNECT_TIMEOUT
                while not repo.sink.connected and time.perf_counter() < deadline:
                    await asyncio.sleep(0.01)
                if not repo.sink.connected:
                    raise RuntimeError("repository: the sink did not connect to PostgreSQL")
                await repo.flush()  # the instance registration from open()
                sample = await self._write_all(repo)
            finally:
                await _shut(repo, runner)
            await self.expect_count(db, "repository", len(self.pings))
        finally:
            await self.drop_db(db)
        return sample

    async def repository_pg_down(self) -> tuple[Sample, Sample]:
        """(write with PostgreSQL stopped, replay after it is started again)."""
        db = await self.fresh_db("down")
        home = Path(tempfile.mkdtemp(prefix="down-", dir=self.work_dir))
        try:
            await asyncio.to_thread(self.server.stop, "fast")
            repo = self._repository(db, home)
            await repo.open()
            ready = asyncio.Event()
            runner = asyncio.create_task(repo.run(ready), name="repository")
            try:
                await ready.wait()
                sink = repo.sink
                assert sink is not None
                if sink.connected:
                    raise RuntimeError("pg-down: the sink is connected to a stopped server")
                await repo.flush()
                write = await self._write_all(repo)
                if sink.connected:
                    raise RuntimeError("pg-down: the sink connected while the server was down")

                # Replay: from the first moment the sink is seen connected (polled every
                # 5 ms) until its spool is empty, i.e. everything committed in PostgreSQL.
                probe = LagProbe()
                probe.start()
                await asyncio.to_thread(self.server.start_again)
                connected: tuple[float, float] | None = None
                mark = 0
                deadline = time.perf_counter() + WAIT_TIMEOUT
                while not (sink.connected and sink.backlog_bytes == 0):
                    if connected is None and sink.connected:
                        connected = (time.perf_counter(), time.process_time())
                        mark = probe.mark()
                    if time.perf_counter() > deadline:
                        raise RuntimeError("pg-down: spool replay did not finish")
                    await asyncio.sleep(0.005)
                done = (time.perf_counter(), time.process_time())
                lag = await probe.stop(since=mark)
                start = connected or done  # connected and drained between two polls
                replay = Sample(
                    len(self.pings), max(done[0] - start[0], 1e-6), done[1] - start[1], lag
                )
            finally:
                if not self.server.is_running():
                    await asyncio.to_thread(self.server.start_again)
                await _shut(repo, runner)
            await self.expect_count(db, "pg-down replay", len(self.pings))
        finally:
            if not self.server.is_running():
                await asyncio.to_thread(self.server.start_again)
            await self.drop_db(db)
        return write, replay


async def _shut(repo: FleetRepository, runner: asyncio.Task[None]) -> None:
    repo.stop()
    try:
        await asyncio.wait_for(runner, 60.0)
    finally:
        await repo.close()


# --------------------------------------------------------------------------- rounds

RAW_COPY = "raw_copy"
RAW_STAGE = "raw_stage"
RAW_EXECUTEMANY = "raw_executemany"
RAW_SINGLE = "raw_single"
REPO = "repo"
REPO_DOWN = "repo_down"
REPLAY = "replay"


async def one_round(bench: Bench, results: Results) -> None:
    steps: list[tuple[str, Callable[[], Awaitable[Sample]]]] = [
        (RAW_COPY, bench.raw_copy),
        (RAW_STAGE, bench.raw_stage_merge),
        (RAW_EXECUTEMANY, bench.raw_executemany),
        (RAW_SINGLE, bench.raw_single),
        (REPO, bench.repository),
    ]
    for name, step in steps:
        sample = await step()
        results.add(name, sample)
        _progress(name, sample)
    write, replay = await bench.repository_pg_down()
    results.add(REPO_DOWN, write)
    _progress(REPO_DOWN, write)
    results.add(REPLAY, replay)
    _progress(REPLAY, replay)
    results.rounds += 1


def _progress(name: str, s: Sample) -> None:
    extra = f", lag p99 {s.lag.p99:.1f} ms" if s.lag else ""
    print(
        f"  {name:<16} {s.rows:>8,} rows in {s.seconds:6.2f} s = {s.rows_per_s:>9,.0f} rows/s, "
        f"CPU {s.cpu_per_100k:.2f} s/100k{extra}",
        file=sys.stderr,
        flush=True,
    )


async def measure(plan: Plan, server: PgServer, work_dir: Path) -> tuple[Results, float]:
    started = time.perf_counter()
    bench = Bench(server, plan, work_dir)
    # The input (rows x (Ping + record tuple)) is long-lived benchmark data, not the daemon's:
    # keep it out of the cyclic GC, whose full collections would otherwise scan it (~200 ms
    # pauses at 500k rows) and show up as event-loop lag the daemon would not have.
    gc.collect()
    gc.freeze()
    print(f"  generated {plan.rows:,} pings", file=sys.stderr, flush=True)
    # A fresh cluster first has to create its WAL segments: one untimed run pays for that.
    warm = await bench.raw_copy()
    print(f"  warm-up: raw copy {warm.rows_per_s:,.0f} rows/s (discarded)", file=sys.stderr)
    results = Results()
    last_round = 0.0
    while results.rounds < plan.max_rounds:
        elapsed = time.perf_counter() - started
        if results.rounds and elapsed + last_round * 1.1 > plan.budget_s:
            break
        print(f"round {results.rounds + 1}", file=sys.stderr, flush=True)
        round_start = time.perf_counter()
        await one_round(bench, results)
        last_round = time.perf_counter() - round_start
    return results, time.perf_counter() - started


# --------------------------------------------------------------------------- report


def _min_median(values: Sequence[float], fmt: str) -> str:
    lo, med = min(values), statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(lo, fmt)}–{format(med, fmt)}"


def _ratio(measured: float, goal: float, higher_is_better: bool) -> str:
    ratio = measured / goal
    ok = ratio >= 1 if higher_is_better else ratio <= 1
    return f"{ratio:.2f} {'✓' if ok else '✗'}"


def render(results: Results, plan: Plan, machine: str, total_s: float) -> str:
    s = results.samples
    rates = {k: [x.rows_per_s for x in v] for k, v in s.items()}

    def med(name: str) -> float:
        return statistics.median(rates[name])

    lines = [
        "## Repository write throughput (ping_history)",
        "",
        machine,
        "",
        f"{plan.rows:,} rows per bulk run ({plan.single_rows:,} for single-row INSERTs); "
        f"{results.rounds} run(s) of each, measured = min–median (one value for one run); "
        "ratio = median ÷ goal (✓ goal met).",
        "",
        "| figure | goal | measured | ratio |",
        "|---|---|---|---|",
    ]

    def rate_row(label: str, name: str, goal: bool) -> None:
        measured = _min_median(rates[name], ",.0f")
        if goal:
            ratio = _ratio(med(name), GOAL_ROWS_PER_S, True)
            lines.append(f"| {label} | ≥ {GOAL_ROWS_PER_S:,} | {measured} | {ratio} |")
        else:
            lines.append(f"| {label} | — | {measured} | — |")

    def lag_rows(label: str, name: str, goal: bool) -> None:
        lags = [x.lag for x in s[name] if x.lag is not None]
        p50 = _min_median([x.p50 for x in lags], ".1f")
        p99s = [x.p99 for x in lags]
        mx = _min_median([x.max for x in lags], ".1f")
        if goal:
            ratio = _ratio(statistics.median(p99s), GOAL_LAG_P99_MS, False)
            goal_text = f"≤ {GOAL_LAG_P99_MS:.0f}"
        else:
            ratio, goal_text = "—", "—"
        lines.append(
            f"| {label}: loop lag p99, ms | {goal_text} | {_min_median(p99s, '.1f')} | {ratio} |"
        )
        lines.append(f"| {label}: loop lag p50 / max, ms | — | {p50} / {mx} | — |")

    def cpu_row(label: str, name: str) -> None:
        cpu = _min_median([x.cpu_per_100k for x in s[name]], ".2f")
        lines.append(f"| {label}: CPU s per 100k rows | — | {cpu} | — |")

    rate_row("repository → PostgreSQL, rows/s", REPO, True)
    rate_row("repository, PostgreSQL down (spool), rows/s", REPO_DOWN, True)
    rate_row("spool replay after restart, rows/s", REPLAY, False)
    rate_row(f"raw `copy_records_to_table`, {BATCH:,}/batch, rows/s", RAW_COPY, False)
    rate_row(
        f"raw COPY → stage → `INSERT … ON CONFLICT` (PgStore's SQL), {STAGE_BATCH:,}/txn, rows/s",
        RAW_STAGE,
        False,
    )
    rate_row(f"raw `executemany` INSERT, {BATCH:,}/batch, rows/s", RAW_EXECUTEMANY, False)
    rate_row("raw single-row INSERT (autocommit), rows/s", RAW_SINGLE, False)
    per_run = [r / c for r, c in zip(rates[REPO], rates[RAW_COPY], strict=True)]
    lines.append(f"| ratio repository / raw copy | — | {_min_median(per_run, '.2f')} | — |")
    lag_rows("repository", REPO, True)
    lag_rows("PostgreSQL down", REPO_DOWN, True)
    lag_rows("spool replay", REPLAY, False)
    cpu_row("repository", REPO)
    cpu_row("PostgreSQL down", REPO_DOWN)
    cpu_row("spool replay", REPLAY)
    cpu_row("raw copy", RAW_COPY)
    lines += [
        "",
        "Rates are rows ÷ wall-clock seconds until the last call returned: for the repository "
        f"`record_pings()` in batches of {BATCH:,} then `flush()`; with PostgreSQL down "
        "`flush()` returns once the rows are fsynced in the spool. Replay is timed from the "
        "sink's reconnect to an empty spool (backoff shortened to "
        f"{RETRY_INITIAL_S}–{RETRY_MAX_S} s so it measures the replay, not the wait). "
        "Loop lag: lateness of a 10 ms sleep in a loop during the run. CPU: "
        "`time.process_time()` of the whole process (all threads). The pre-generated input "
        "is `gc.freeze()`d so its size does not inflate GC pauses; an untimed raw-copy run "
        "warms the fresh cluster (WAL segment creation) first. "
        f"Row counts verified with `count(*)` after each run. Whole benchmark: {total_s:.0f} s.",
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


# --------------------------------------------------------------------------- entry


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
    with tempfile.TemporaryDirectory(prefix="clawd-bench-") as tmp:
        try:
            print("starting PostgreSQL …", file=sys.stderr, flush=True)
            server.start()
            server.create_role(TEST_DB_USER, TEST_DB_PASSWORD)
            machine = machine_line(server)
            results, total = asyncio.run(measure(plan, server, Path(tmp)))
        finally:
            server.cleanup()
    return render(results, plan, machine, total)
