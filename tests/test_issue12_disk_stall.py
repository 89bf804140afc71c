"""Issue 12 item 7: a full disk must not stall PostgreSQL writes unseen.

With the home on a full filesystem the spool could not be written, and the sink waited for
it: pings stopped reaching a healthy PostgreSQL while `clawd_postgres_connected` said 1 and
`clawd status --live` showed nothing wrong. Now, with a real `clawd run` (three real SSH
peers, a real PostgreSQL, the home on a small tmpfs that the test fills):

* disk full, PostgreSQL up: pings keep reaching PostgreSQL (straight from memory), and
  status, STATUS text and metrics say the spool cannot be written;
* disk full and PostgreSQL stopped: writes wait in memory, and status and metrics show the
  stall (`clawd_postgres_write_stalled 1`, `clawd_postgres_pending_rows` > 0);
* PostgreSQL back, then space back: everything is delivered; no ping is lost (every
  target's ping series in PostgreSQL has no gap, and it holds every ping the daemon sent);
* stopping while neither the disk nor PostgreSQL takes writes ends promptly and reports the
  rows it could not keep (the only loss, bounded by the in-memory queue).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import structlog
from daemonproc import DaemonProcess
from faulthelpers import SELF_ID, daemon_config, three_peers
from helpers_pg import (
    free_port,
    make_pings,
    make_settings,
    start_repo,
    stop_repo,
    wait_delivered,
    wait_ready,
)
from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, PgServer
from sshpeers import SshFleet, SshPeer
from test_fault_disk_full import fill, small_home

__all__ = ["small_home"]

pytestmark = pytest.mark.timeout(150)

INTERVAL = 0.2
MAX_GAP_SECONDS = 3.0  # between two recorded pings to one peer (interval 0.2 s)
STATE_WITHIN = 20.0


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    async with three_peers(tmp_path, "gw-s", 60) as fleet:
        yield fleet


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def _has_rows(dsn: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _rows(dsn) > 0

    return check


def _live(daemon: DaemonProcess) -> dict[str, object]:
    proc = daemon.cli("status", "--live", "--json")
    assert proc.returncode == 0, f"{proc.stderr}\n{daemon.log[-3000:]}"
    answer: dict[str, object] = json.loads(proc.stdout)
    return answer


async def _rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ping_history"))
    except asyncpg.UndefinedTableError:
        return 0  # not migrated yet
    finally:
        await conn.close(timeout=5)


async def _until(
    what: str, check: Callable[[], object], daemon: DaemonProcess, timeout: float = STATE_WITHIN
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        daemon.read()
        assert daemon.proc.poll() is None, f"clawd exited:\n{daemon.log[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{daemon.log[-3000:]}"
        await asyncio.sleep(0.2)


async def test_full_disk_never_hides_or_loses_postgres_writes(
    small_home: Path, fleet: tuple[SshFleet, dict[str, SshPeer]], private_pg: PgServer
) -> None:
    ssh_fleet, peers = fleet
    home = small_home
    db = private_pg.database("claw_clan", TEST_DB_USER, TEST_DB_PASSWORD)
    pg = {
        "host": db.host,
        "port": db.port,
        "database": db.database,
        "user": db.user,
        "password": db.password,
        "connectTimeoutSeconds": 2,
    }
    port = free_port()
    config = daemon_config(ssh_fleet, peers, interval=INTERVAL, pg=pg)
    config["metrics"] = {"listen": f"127.0.0.1:{port}"}
    (home / "config.json").write_text(json.dumps(config))
    (home / "config.json").chmod(0o600)
    filler = home / "filler"

    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=ready")
        await _until("pings in PostgreSQL", _has_rows(db.dsn), daemon)
        assert _live(daemon)["postgres"] == "connected"

        # 1. The disk fills up; PostgreSQL is fine: pings keep reaching it, and it shows.
        await asyncio.to_thread(fill, filler)
        assert os.statvfs(home).f_bavail == 0
        await _until(
            "status shows the spool failing",
            lambda: "spool not writable" in str(_live(daemon)["postgres"]),
            daemon,
        )
        live = _live(daemon)
        assert str(live["postgres"]).startswith("connected; spool not writable"), live
        assert "No space left" in str(live["postgres"]), live
        metrics = await asyncio.to_thread(_metrics, port)
        assert metrics["clawd_postgres_connected"] == 1
        assert metrics["clawd_spool_write_failing"] == 1
        before = await _rows(db.dsn)
        await asyncio.sleep(3.0)
        during = await _rows(db.dsn)
        # Three peers every 0.2 s for 3 s is ~45 pings: most must have arrived.
        assert during - before >= 20, (before, during)
        assert (await asyncio.to_thread(_metrics, port))["clawd_postgres_write_stalled"] == 0

        # 2. PostgreSQL goes away too: the writes wait in memory, and that shows as a stall.
        await asyncio.to_thread(private_pg.stop)
        await _until(
            "metrics show the stall",
            lambda: _metrics(port)["clawd_postgres_write_stalled"] == 1,
            daemon,
        )
        # A scrape taken while a batch is out on a write attempt sees 0 rows queued (seen
        # once in 750 CI tests): the rows held in memory must show within the bound.
        await _until(
            "metrics show rows held in memory",
            lambda: _metrics(port)["clawd_postgres_pending_rows"] > 0,
            daemon,
        )
        metrics = await asyncio.to_thread(_metrics, port)
        assert metrics["clawd_postgres_write_wait_seconds"] >= 5, metrics
        live = _live(daemon)
        assert str(live["postgres"]).startswith("unavailable; spool not writable"), live
        assert "held in memory" in str(live["postgres"]), live

        # 3. PostgreSQL comes back (disk still full): the waiting rows are delivered.
        await asyncio.to_thread(private_pg.start_again)
        await _until(
            "writes delivered after PostgreSQL is back",
            lambda: (
                _metrics(port)["clawd_postgres_pending_rows"] < 100
                and _metrics(port)["clawd_postgres_write_stalled"] == 0
            ),
            daemon,
            timeout=40,
        )

        # 4. Space comes back: the spool is used again; status is plain "connected".
        filler.unlink()
        await _until(
            "status back to connected", lambda: _live(daemon)["postgres"] == "connected", daemon
        )
        metrics = await asyncio.to_thread(_metrics, port)
        assert metrics["clawd_spool_write_failing"] == 0
        await asyncio.sleep(1.0)
        sent = int(_live(daemon)["pinger"]["pings_sent"])  # type: ignore[index]
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log[-3000:]
    daemon.read()
    assert daemon.log.count("event=spool_write_failed") <= 3, daemon.log[-3000:]
    assert "event=postgres_writes_lost" not in daemon.log
    assert "event=spool_write_recovered" in daemon.log

    # Nothing lost: every ping the daemon sent is in PostgreSQL, without a gap per peer.
    conn = await asyncpg.connect(db.dsn, timeout=10)
    try:
        rows = await conn.fetch(
            'SELECT target_gateway, "timestamp" AS ts FROM ping_history'
            " WHERE source_gateway = $1 ORDER BY 2",
            SELF_ID,
        )
    finally:
        await conn.close(timeout=5)
    assert len(rows) >= sent, (len(rows), sent)
    for gid in peers:
        times = [r["ts"] for r in rows if r["target_gateway"] == gid]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert times and max(gaps) < MAX_GAP_SECONDS, (gid, max(gaps, default=None))


async def test_stop_with_a_full_disk_and_postgres_down_reports_what_is_lost(
    small_home: Path, private_pg: PgServer
) -> None:
    """Neither the spool nor PostgreSQL takes writes when clawd stops: stopping must not
    hang (it did, for ever), and the rows that could not be kept are counted and logged."""
    db = private_pg.database("claw_clan", TEST_DB_USER, TEST_DB_PASSWORD)
    repo, ready = await start_repo(make_settings(db, small_home))
    try:
        assert await wait_ready(repo, ready, 15)
        await wait_delivered(repo)
        sink = repo.sink  # the repository lets go of its sink when it stops
        assert sink is not None
        await asyncio.to_thread(private_pg.stop)
        await asyncio.to_thread(fill, small_home / "filler")
        await repo.record_pings(make_pings(50))
        for _ in range(100):
            if repo.sink.spool_failing and not repo.sink.connected:
                break
            await asyncio.sleep(0.05)
        assert repo.sink.pending_rows == 50
        assert repo.sink.describe().startswith("unavailable; spool not writable")
    finally:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            await stop_repo(repo)  # fails after 20 s if stopping hangs
    assert time.monotonic() - started < 10
    lost = [e for e in logs if e["event"] == "postgres_writes_lost"]
    assert [e["rows"] for e in lost] == [50], logs
    assert sink.rows_lost == 50
