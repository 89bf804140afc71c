"""Fault injection: `clawd run` SIGKILLed at random points, 50 times, while it writes.

backend=postgres, three SSH peers pinged every 0.1 s, one of them going up and down so
that incidents are written, and PostgreSQL itself SIGKILLed for some iterations. Each
iteration starts the daemon (it must be ready within READY_WITHIN s: a restart after a
kill works), lets it run a seeded random time and SIGKILLs it. After every kill, every
JSON file under home parses (a .jsonl may only have a torn last line). At the end one
more run replays the spool, and PostgreSQL holds no ping or incident twice and every
incident of incidents.jsonl exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemonproc import DaemonProcess
from faulthelpers import (
    assert_pg_exactly_once,
    assert_store_parses,
    daemon_config,
    incident_keys,
    three_peers,
)
from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, PgServer
from sshpeers import SshFleet, SshPeer

pytestmark = pytest.mark.timeout(150)

ITERATIONS = 50
SEED = 20261123
INTERVAL = 0.1
READY_WITHIN = 10.0
PG_DOWN_EVERY = 10  # PostgreSQL is SIGKILLed during every 10th iteration
MAX_RUN_SECONDS = 1.5  # the random time between ready and the kill (pings start ~1 s in)
# A bound against a hang, not a speed test: the run takes ~85 s on an idle 2-core machine
# (50 starts of a Python process at ~0.9 s each, plus the random run times), and 90 s
# failed it under load. Each start has its own bound (READY_WITHIN).
TOTAL_BUDGET = 130.0


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    async with three_peers(tmp_path, "gw-r", 30) as fleet:
        yield fleet


async def _ready(daemon: DaemonProcess) -> float:
    started = time.monotonic()
    await daemon.await_log("event=ready", timeout=READY_WITHIN)
    return time.monotonic() - started


def _kill(daemon: DaemonProcess) -> None:
    daemon.stop(signal.SIGKILL, timeout=10)
    assert daemon.proc.returncode == -signal.SIGKILL


async def test_sigkill_at_random_points_loses_nothing_twice(
    tmp_path: Path, private_pg: PgServer, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    ssh_fleet, peers = fleet
    db = private_pg.database("claw_clan", TEST_DB_USER, TEST_DB_PASSWORD)
    pg = {
        "host": db.host,
        "port": db.port,
        "database": db.database,
        "user": db.user,
        "password": db.password,
        "poolMin": 1,
        "poolMax": 2,
        "connectTimeoutSeconds": 1,
    }
    home = tmp_path / "home"
    home.mkdir()
    config = daemon_config(
        ssh_fleet, peers, interval=INTERVAL, pg=pg, storage={"flushIntervalSeconds": 0.02}
    )
    # Every change is an incident, none held as flapping.
    config["detection"] = {"flapHighPercent": 100, "flapLowPercent": 100}
    (home / "config.json").write_text(json.dumps(config))
    (home / "config.json").chmod(0o600)
    flapper = peers["gw-r2"]

    ready_times: list[float] = []
    last_log = ""
    torn = 0
    for n in range(ITERATIONS):
        pg_down = n % PG_DOWN_EVERY == PG_DOWN_EVERY - 1
        if pg_down:
            await asyncio.to_thread(private_pg.kill)
        # The flapping peer changes every iteration: offline/recovery incidents get written.
        await (flapper.stop() if flapper.running else flapper.start())
        daemon = DaemonProcess(home)
        try:
            ready_times.append(await _ready(daemon))
            await asyncio.sleep(rng.uniform(0.0, MAX_RUN_SECONDS))
        finally:
            _kill(daemon)
        assert "Traceback" not in daemon.log, daemon.log[-3000:]
        last_log = daemon.log
        lines = assert_store_parses(home)
        raw = (home / "incidents.jsonl").read_bytes() if lines.get("incidents.jsonl") else b""
        torn += bool(raw) and not raw.endswith(b"\n")
        for name in ("fleet.json", "state.json"):
            assert (home / name).exists(), name
        assert len(list((home / "peers").glob("*.json"))) == len(peers)
        if pg_down:
            await asyncio.to_thread(private_pg.start_again)

    # The last run: PostgreSQL up, the spool replays, a clean stop.
    if not flapper.running:
        await flapper.start()
    daemon = DaemonProcess(home)
    try:
        await _ready(daemon)
        deadline = time.monotonic() + 20
        while True:
            live = json.loads(daemon.cli("status", "--live", "--json").stdout)
            spool = home / "spool" / "pg-spool.jsonl"
            if live["postgres"] == "connected" and spool.stat().st_size == 0:
                break
            assert time.monotonic() < deadline, (live["postgres"], spool.stat().st_size)
            await asyncio.sleep(0.2)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log[-3000:]
    assert "Traceback" not in daemon.log, daemon.log[-3000:]
    assert not list(home.rglob("*.corrupt-*")), "a kill must never leave a corrupt file"

    keys = incident_keys(home)
    # Enough incidents for the exactly-once check to mean something (how many get written
    # before each kill depends on the machine's speed: 9-20 seen for 50 iterations).
    assert len(keys) >= 5, (daemon.incidents(), last_log[-3000:])
    per_peer = await assert_pg_exactly_once(db.dsn, keys)
    assert set(per_peer) == set(peers)
    elapsed = time.monotonic() - started
    assert max(ready_times) <= READY_WITHIN
    assert elapsed < TOTAL_BUDGET, f"{elapsed:.0f} s; torn last lines seen: {torn}"
