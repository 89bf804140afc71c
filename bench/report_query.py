"""`clawd report --since 30d` over 10,000,000 ping_history rows for 1,000 peers.

A throwaway PostgreSQL cluster (``tests/pgserver.py``) gets clawd's schema up to
migration 002, then ``rows`` pings in one ``INSERT … SELECT generate_series``: 1,000
peers, one ping each every 30 days / (rows / 1,000), ±10 % jitter, a client_key UUID per
row as the daemon writes them, 0.5 % scattered failures plus one 2-hour outage per
peer. Then migrations 003 (the covering index) and 004 (the hourly rollup) are applied
to the filled table -- their duration is how long the upgrade blocks ping writes -- and
``VACUUM (FREEZE, ANALYZE)``; then one ``RollupMaintainer.roll_once`` rolls every ended
hour (the initial rollup).

Measured, ``runs`` times each (min-median):

* end to end: ``python -m clawd.cli.main report --since 30d --json`` as a subprocess;
* the SQL alone: ``clawd.keep.history.collect.build_report`` in-process (both connections);
* for comparison, the exact path before migration 004: ``queries.PEER_STATS`` on one
  connection, all peers (once).

Then one more hour of rows (1,000 peers x 360 pings) is inserted and rolled by one
incremental ``roll_once``. The plan is the ``EXPLAIN (ANALYZE, TIMING OFF)`` of the
rollup sums for all peers.

Run: ``.venv/bin/python -m bench.report_query [--quick]`` (``--quick``: 1,000,000 rows,
one run). In ``bench/run.py``: ``report_query.SECTION: lambda quick: report_query.run(quick)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from clawd.config.load import settings_from_data
from clawd.core.logs import configure_logging
from clawd.keep.history import queries
from clawd.keep.history.collect import build_report, cut
from clawd.keep.history.db import open_store
from clawd.keep.history.hourly import HOUR, hour_of
from clawd.keep.history.rollup import GRACE, RollupMaintainer
from clawd.keep.history.timespec import Window
from clawd.keep.retention.dbjob import LeaderDb
from clawd.keep.store.migrations import load_migrations, migrate

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from pgserver import PgServer  # noqa: E402

SECTION = "report-query"
ROLE, PASSWORD, DATABASE = "claw", "bench-report-pw", "claw_clan"
PEERS = 1_000
DAYS = 30
GOAL_S = 2.0
INDEX_MIGRATION = "003-history-indexes.sql"

# $1 rows, $2 peers, $3 window start, $4 seconds between two pings of one peer,
# $5 rounds (pings per peer), $6 rounds in a peer's outage (2 hours).
FILL = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms,
                          client_key)
SELECT 'gw-bench', 'gw-' || lpad(peer::text, 4, '0'), ok,
       $3::timestamptz + (round_no + 0.1 + random() * 0.8) * $4::float8 * interval '1 second',
       CASE WHEN ok THEN 3 + (random() * random() * 400)::int END, gen_random_uuid()
FROM (
    SELECT g % $2::bigint AS peer, g / $2::bigint AS round_no,
           random() >= 0.005
           AND NOT (g / $2) - (g % $2) * 37 % ($5::bigint - $6::bigint)
                   BETWEEN 0 AND $6::bigint - 1 AS ok
    FROM generate_series(0, $1::bigint - 1) AS g
) AS pings
"""
# One more hour: $1 peers x $2 pings, $3 the hour's start, 10 s apart.
FILL_HOUR = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms,
                          client_key)
SELECT 'gw-bench', 'gw-' || lpad(peer::text, 4, '0'), true,
       $3::timestamptz + (n * 10 + random() * 5) * interval '1 second',
       3 + (random() * random() * 400)::int, gen_random_uuid()
FROM generate_series(0, $2::int - 1) AS n, generate_series(0, $1::int - 1) AS peer
"""
FILL_NAMES = """
INSERT INTO fleet_instances (gateway_id, name)
SELECT 'gw-' || lpad(n::text, 4, '0'), 'node-' || n FROM generate_series(0, $1 - 1) AS n
"""


@dataclass(frozen=True)
class Plan:
    rows: int
    runs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls(rows=300_000, runs=1) if quick else cls(rows=10_000_000, runs=3)


@dataclass
class Figures:
    rows: int = 0
    fill_s: float = 0.0
    index_s: float = 0.0
    vacuum_s: float = 0.0
    table_mb: float = 0.0
    index_mb: float = 0.0
    peers: int = 0
    cli: list[float] | None = None
    sql: list[float] | None = None
    single: list[float] | None = None
    plan: list[str] | None = None
    rollup_s: float = 0.0
    rollup_hours: int = 0
    rollup_mb: float = 0.0
    incremental_s: float = 0.0
    incremental_hours: int = 0


def span(values: Sequence[float]) -> str:
    """min-median, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{min(values):.2f}–{statistics.median(values):.2f}"


def config_data(server: PgServer, home: Path) -> dict[str, object]:
    return {
        "backend": "postgres",
        "home": str(home),
        "postgres": {
            "host": server.host,
            "port": server.port,
            "database": DATABASE,
            "user": ROLE,
            "password": PASSWORD,
        },
        "instance": {"gatewayId": "gw-bench", "name": "bench", "sshUser": "claw"},
    }


async def fill(conn: asyncpg.Connection, plan: Plan, start: datetime, f: Figures) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="clawd-bench-migrations-"))
    try:
        for m in load_migrations():  # everything before the index: the table as it was
            if m.name < INDEX_MIGRATION:
                (scratch / m.name).write_text(m.sql, encoding="utf-8")
        await migrate(conn, scratch)
    finally:
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()
    rounds = plan.rows // PEERS
    step = DAYS * 86_400 / rounds
    outage = max(1, round(7200 / step))
    began = time.perf_counter()
    # Secondary indexes are dropped for the load and rebuilt from their own definitions:
    # maintaining the random client_key index row by row doubled the fill time.
    secondary = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ping_history' "
        "AND indexname <> 'ping_history_pkey'"
    )
    for index in secondary:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    await conn.execute("SET synchronous_commit = off")
    await conn.execute(FILL, plan.rows, PEERS, start, step, rounds, outage)
    await conn.execute(FILL_NAMES, PEERS)
    for index in secondary:
        await conn.execute(index["indexdef"])
    await conn.execute("RESET synchronous_commit")
    f.fill_s = time.perf_counter() - began
    began = time.perf_counter()
    await migrate(conn)
    f.index_s = time.perf_counter() - began
    began = time.perf_counter()
    # FREEZE: a plain VACUUM straight after the load may not yet set the visibility map.
    await conn.execute("VACUUM (FREEZE, ANALYZE) ping_history")
    f.vacuum_s = time.perf_counter() - began
    f.rows = int(await conn.fetchval("SELECT count(*) FROM ping_history"))
    mb = 1024 * 1024
    f.table_mb = await conn.fetchval("SELECT pg_table_size('ping_history')") / mb
    f.index_mb = (
        await conn.fetchval("SELECT pg_relation_size('idx_ping_history_target_ts_cover')") / mb
    )


def maintainer(server: PgServer) -> RollupMaintainer:
    @asynccontextmanager
    async def connect() -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(
            host=server.host, port=server.port, user=ROLE, password=PASSWORD, database=DATABASE
        )
        try:
            yield conn
        finally:
            await conn.close()

    return RollupMaintainer(LeaderDb(connect, lambda: True))


async def roll(server: PgServer, now: datetime) -> tuple[float, int]:
    began = time.perf_counter()
    result = await maintainer(server).roll_once(now)
    if result.skipped or result.error:
        raise RuntimeError(f"rollup did not run: {result}")
    return time.perf_counter() - began, result.hours


def cli_seconds(config: Path) -> float:
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", "report", "--since", "30d", "--json",
         "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"clawd report failed: {proc.stderr.strip()}")
    peers = json.loads(proc.stdout)["peers"]
    if not peers:
        raise RuntimeError("clawd report returned no peers")
    return seconds


async def measure(plan: Plan, work: Path) -> Figures:
    f = Figures(cli=[], sql=[], single=[])
    server = PgServer()
    server.start()
    try:
        server.create_role(ROLE, PASSWORD)
        server.create_database(DATABASE, owner=ROLE)
        now = datetime.now(UTC)
        start = now - timedelta(days=DAYS)
        conn = await asyncpg.connect(
            host=server.host, port=server.port, user=ROLE, password=PASSWORD, database=DATABASE
        )
        try:
            await fill(conn, plan, start, f)
            f.rollup_s, f.rollup_hours = await roll(server, datetime.now(UTC))
            await conn.execute("VACUUM ANALYZE ping_rollup_hourly")
            f.rollup_mb = await conn.fetchval("SELECT pg_table_size('ping_rollup_hourly')") / 2**20
            config = work / "config.json"
            config.write_text(json.dumps(config_data(server, work)), encoding="utf-8")
            settings = settings_from_data(config_data(server, work), environ={})
            cli_seconds(config)  # warm-up: caches, catalog
            store = await open_store(settings.postgres)
            try:
                assert f.cli is not None and f.sql is not None and f.single is not None
                for _ in range(plan.runs):
                    f.cli.append(await asyncio.to_thread(cli_seconds, config))
                    now = datetime.now(UTC)
                    window = Window(now - timedelta(days=DAYS), now)
                    began = time.perf_counter()
                    report = await build_report(store.pool, window, now)
                    f.sql.append(time.perf_counter() - began)
                    f.peers = len(report.peers)
                ids = [p.gateway_id for p in report.peers]
                args = (window.start, window.end, window.end, timedelta(seconds=400))
                began = time.perf_counter()
                await conn.execute("SET jit = off")
                await conn.fetch(queries.PEER_STATS, *args, ids)
                f.single.append(time.perf_counter() - began)
                pieces = cut(window, now)
                assert pieces.full is not None
                await conn.execute(queries.ROLLUP_WORK_MEM.replace(" LOCAL", ""))  # as the report
                rows = await conn.fetch(
                    "EXPLAIN (ANALYZE, TIMING OFF) " + queries.ROLLUP_TOTALS,
                    *pieces.full, None, None, None, [], [],
                )  # fmt: skip
                f.plan = [r[0] for r in rows]
                hour = hour_of(datetime.now(UTC))
                await conn.execute(FILL_HOUR, PEERS, 360, hour)
                f.incremental_s, f.incremental_hours = await roll(
                    server, max(datetime.now(UTC), hour + HOUR + GRACE)
                )
            finally:
                await store.close()
        finally:
            await conn.close()
    finally:
        server.cleanup()
    return f


def render(f: Figures, quick: bool) -> str:
    plan = Plan.for_mode(quick)
    cli = f.cli or []
    ratio = statistics.median(cli) / GOAL_S if cli else float("nan")
    mark = "✓" if ratio <= 1.0 else "✗"
    rows = [
        ("ping_history rows / peers in the report", "10,000,000 / 1,000",
         f"{f.rows:,} / {f.peers:,}", "—"),
        ("table / covering index size, MB", "—", f"{f.table_mb:.0f} / {f.index_mb:.0f}", "—"),
        ("fill (INSERT … generate_series, then the 001/002 indexes rebuilt), s", "—",
         f"{f.fill_s:.1f}", "—"),
        ("migrations 003 + 004 on the filled table (writes blocked), s", "—",
         f"{f.index_s:.1f}", "—"),
        ("VACUUM (FREEZE, ANALYZE), s", "—", f"{f.vacuum_s:.1f}", "—"),
        (f"initial rollup of {f.rows:,} rows ({f.rollup_hours:,} peer-hours), s", "—",
         f"{f.rollup_s:.1f}", "—"),
        ("ping_rollup_hourly size, MB", "—", f"{f.rollup_mb:.0f}", "—"),
        ("`clawd report --since 30d --json`, end to end, s", f"≤ {GOAL_S:.0f}", span(cli),
         f"{ratio:.2f} {mark}"),
        ("SQL alone (build_report, rollup + live edges), s", "—", span(f.sql or []), "—"),
        ("exact path before 004: PEER_STATS, all peers on one connection, s", "—",
         span(f.single or []), "—"),
        (f"incremental roll_once: one more hour, 1,000 x 360 pings "
         f"({f.incremental_hours:,} peer-hours), s", "—", f"{f.incremental_s:.2f}", "—"),
    ]  # fmt: skip
    head = (
        "## Report query (`clawd report --since 30d`)\n\n"
        f"Machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; throwaway PostgreSQL cluster "
        f"(tests/pgserver.py). {plan.runs} run(s) of each; measured = min–median (one value "
        "for one run); ratio = median ÷ goal (✓ goal met).\n\n"
        "| figure | goal | measured | ratio |\n|---|---|---|---|\n"
    )
    table = "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    plan_text = "\n".join(f.plan or [])
    return (
        head + table + "\nPlan of the rollup sums, all peers (`EXPLAIN (ANALYZE, TIMING OFF)`):\n\n"
        f"```\n{plan_text}\n```\n"
    )


def run(quick: bool = False) -> str:
    """Measure and return the section's markdown."""
    configure_logging("error")
    plan = Plan.for_mode(quick)
    with tempfile.TemporaryDirectory(prefix="clawd-bench-report-") as tmp:
        return render(asyncio.run(measure(plan, Path(tmp))), quick)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report_query", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows, one run")
    args = parser.parse_args(argv)
    print(run(quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
