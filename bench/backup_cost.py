"""Backup cost: clawd's backup of a 1,000,000-row ping_history against a bare
``pg_dump -Fc`` of the same database, side by side in one run.

A throwaway PostgreSQL cluster (``tests/pgserver.py``) gets clawd's schema and 1,000,000
ping rows (one ``INSERT … SELECT generate_series``, with a client_key UUID per row as the
daemon writes them). Then, alternating, ``runs`` times each:

* bare: ``pg_dump -Fc -f FILE`` (the same binary and environment clawd uses; pg_dump
  fsyncs the file itself);
* clawd: ``clawd.act.backup.runner.run_backup`` with verification off -- the lock, the JSON
  archive, pg_dump from an exported snapshot while the five tables are counted in the
  same snapshot, fsync + rename + directory fsync, sha256, the manifest.

Verification is timed separately: ``run_verify`` (sha256, ``pg_restore -f /dev/null``, a
full restore into a scratch database, row counts, drop), and its two pg_restore steps on
their own. During the backup and the verification a probe task sleeps 10 ms in a loop and
records how late it wakes (event-loop lag).

Run: ``.venv/bin/python -m bench.backup_cost [--quick]`` (``--quick``: 200,000 rows, one run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from clawd.act.backup.names import backup_dir, dump_name
from clawd.act.backup.pgtools import find_bin_dir, pg_env, probe
from clawd.act.backup.reverify import run_verify
from clawd.act.backup.runner import run_backup
from clawd.act.backup.verify import read_dump, restore_scratch
from clawd.config.load import settings_from_data
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging
from clawd.keep.store.migrations import migrate

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from pgserver import PgServer  # noqa: E402

SECTION = "backup-cost"
Row = tuple[str, str, str, str]
T = TypeVar("T")

ROLE, PASSWORD, DATABASE = "claw", "bench-backup-pw", "claw_clan"
PROBE_SECONDS = 0.010
GOAL_RATIO = 1.10
GOAL_LAG_MS = 50.0

FILL = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms,
                          client_key)
SELECT 'gw-' || (g % 50), 'gw-' || (g % 49), g % 7 <> 0,
       now() - g * interval '10 milliseconds',
       CASE WHEN g % 7 <> 0 THEN g % 500 END, gen_random_uuid()
FROM generate_series(1, $1) AS g
"""


@dataclass(frozen=True)
class Plan:
    rows: int
    runs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls(rows=200_000, runs=1) if quick else cls(rows=1_000_000, runs=3)


class LagProbe:
    """Lateness of a 10 ms sleep, recorded while `measuring`."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.measuring = False

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(PROBE_SECONDS)
            if self.measuring:
                self.samples.append(max(0.0, time.monotonic() - before - PROBE_SECONDS))

    @contextlib.asynccontextmanager
    async def window(self) -> AsyncIterator[list[float]]:
        self.samples = []
        self.measuring = True
        try:
            yield self.samples
        finally:
            self.measuring = False


def p99_ms(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000 if ordered else 0.0


def span(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """min-median, or the one value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(min(values))}–{fmt.format(statistics.median(values))}"


def verdict(ratio: float) -> str:
    return f"{ratio:.2f} {'✓' if ratio <= 1.0 else '✗'}"


async def timed(work: Awaitable[T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await work
    return time.perf_counter() - started, result


def settings_for(server: PgServer, home: Path, **backup: Any) -> Settings:
    return settings_from_data(
        {
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
            "backup": backup,
        },
        environ={},
    )


async def prepare(server: PgServer, rows: int) -> None:
    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=ROLE, password=PASSWORD, database=DATABASE
    )
    try:
        await migrate(conn)
        await conn.execute(FILL, rows)
        await conn.execute("VACUUM ANALYZE ping_history")
    finally:
        await conn.close()


def bare_dump(settings: Settings, path: Path) -> float:
    """Wall seconds of `pg_dump -Fc -f path` (blocking, outside the event loop's timing)."""
    pg_dump = find_bin_dir(None) / "pg_dump"
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [str(pg_dump), "-Fc", "-f", str(path)], env=pg_env(settings.postgres), check=True
    )
    return time.perf_counter() - started


async def measure(plan: Plan, work: Path) -> list[Row]:
    server = PgServer()  # fsync off on the server: it only reads here; the dumps fsync
    server.start()
    try:
        server.create_role(ROLE, PASSWORD)
        server.execute(f"ALTER ROLE {ROLE} CREATEDB")
        server.create_database(DATABASE, owner=ROLE)
        fill_s, _ = await timed(prepare(server, plan.rows))
        db_bytes = int(server.fetchval(f"SELECT pg_database_size('{DATABASE}')"))
        home = work / "home"
        home.mkdir()
        (home / "state.json").write_text('{"gatewayId": "gw-bench", "sshUser": "claw"}')
        settings = settings_for(server, home, verify=False, keepMin=100)
        bare_path = work / "bare.dump"
        bare_dump(settings, bare_path)  # warm-up: caches, catalog

        probe_task = LagProbe()
        task = asyncio.create_task(probe_task.run())
        bare: list[float] = []
        ours: list[float] = []
        lags: list[float] = []
        lag_max: list[float] = []
        stamp = ""
        for _ in range(plan.runs):
            bare.append(await asyncio.to_thread(bare_dump, settings, bare_path))
            async with probe_task.window() as samples:
                seconds, result = await timed(run_backup(settings, "bench"))
            assert result.ok, result.error
            ours.append(seconds)
            lags.append(p99_ms(samples))
            lag_max.append(max(samples, default=0.0) * 1000)
            stamp = result.stamp or ""
        dump = backup_dir(home) / dump_name(stamp)

        verifying = settings_for(server, home, verify=True, verifyRestore="each")
        async with probe_task.window() as samples:
            verify_s, verified = await timed(run_verify(verifying, None))
        assert verified.ok and verified.verification.restore == "ok", verified
        verify_lag = p99_ms(samples)
        tools = await probe(None)
        read_s, read = await timed(read_dump(tools, dump))
        restore_s, (restored, _) = await timed(
            restore_scratch(verifying.postgres, tools, dump, None, ledger=backup_dir(home))
        )
        assert read == "ok" and restored == "ok"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        server.cleanup()

    ratio = statistics.median(ours) / statistics.median(bare)
    mb = 1_000_000
    return [
        (f"rows in ping_history (database size {db_bytes / mb:.0f} MB)", "1,000,000",
         f"{plan.rows:,} (filled in {fill_s:.1f} s)", "—"),
        ("bare `pg_dump -Fc -f FILE`, s", "— (notes: 1.42)", span(bare), "—"),
        ("clawd backup (snapshot + counts + JSON archive + fsync + sha256 + manifest), s",
         "—", span(ours), "—"),
        ("ratio clawd / bare (medians)", f"≤ {GOAL_RATIO:.2f}", f"{ratio:.3f}",
         verdict(ratio / GOAL_RATIO)),
        ("dump size clawd / bare, MB", "— (notes: 10.4)",
         f"{dump.stat().st_size / mb:.1f} / {bare_path.stat().st_size / mb:.1f}", "—"),
        ("event-loop lag during the backup, p99 ms", f"≤ {GOAL_LAG_MS:.0f}", span(lags, "{:.1f}"),
         verdict(statistics.median(lags) / GOAL_LAG_MS)),
        ("event-loop lag during the backup, max ms", "—", span(lag_max, "{:.1f}"), "—"),
        ("verification total (sha256 + full read + scratch restore + counts + drop), s", "—",
         f"{verify_s:.2f}", "—"),
        ("  of which `pg_restore -f /dev/null` (full read), s", "—", f"{read_s:.2f}", "—"),
        ("  of which restore into a scratch database + counts + drop, s",
         "— (notes: pg_restore 1.9)", f"{restore_s:.2f}", "—"),
        ("event-loop lag during verification, p99 ms", f"≤ {GOAL_LAG_MS:.0f}",
         f"{verify_lag:.1f}", verdict(verify_lag / GOAL_LAG_MS)),
    ]  # fmt: skip


def run(quick: bool) -> list[Row]:
    """The figures of one run: (figure, goal, measured, ratio)."""
    configure_logging("error")
    plan = Plan.for_mode(quick)
    with tempfile.TemporaryDirectory(prefix="clawd-bench-backup-") as tmp:
        return asyncio.run(measure(plan, Path(tmp)))


def render(rows: Sequence[Row], quick: bool = False) -> str:
    plan = Plan.for_mode(quick)
    head = (
        "## Backup cost (pg_dump of 1M ping rows)\n\n"
        f"Machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; pg_dump/pg_restore from "
        f"{find_bin_dir(None)}. {plan.runs} run(s) of each, alternating; measured = "
        "min–median (one value for one run); ratio = measured ÷ goal (✓ goal met).\n\n"
        "| figure | goal | measured | ratio |\n|---|---|---|---|\n"
    )
    return head + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backup_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200,000 rows, one run")
    args = parser.parse_args(argv)
    print(render(run(quick=args.quick), args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
