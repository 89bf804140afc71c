"""Fault injection: PostgreSQL SIGKILLed under a running `clawd run`, back 10 s later.

tests/test_pg_outage.py covers SIGKILL during writes with the repository in-process; this
one runs the whole daemon as a subprocess pinging three SSH peers every 0.2 s, kills the
server, keeps it away for 10 s (a peer goes offline meanwhile, so incidents happen during
the outage), starts it again and stops the daemon. Nothing lost, nothing twice:

* ping_history holds exactly as many rows as the daemon's pinger says it sent
  (`pinger_stopped pings_sent=N`), no client_key twice, and no peer has a gap in its
  ping times longer than a few intervals, across the outage too;
* every incident in incidents.jsonl is in incident_log exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from daemonproc import DaemonProcess
from faulthelpers import (
    assert_pg_exactly_once,
    assert_store_parses,
    daemon_config,
    incident_keys,
    logged_int,
    three_peers,
)
from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, PgServer
from sshpeers import SshFleet, SshPeer

pytestmark = pytest.mark.timeout(90)

INTERVAL = 0.2
OUTAGE_SECONDS = 10.0
# A round can wait a ping timeout (0.5 s) on a failing peer, plus jitter and a reconnect.
MAX_GAP_SECONDS = 4 * INTERVAL + 1.0


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    async with three_peers(tmp_path, "gw-k", 20) as fleet:
        yield fleet


async def _ping_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ping_history"))
    finally:
        await conn.close(timeout=5)


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


async def test_postgres_sigkill_for_10s_under_a_running_daemon(
    tmp_path: Path, private_pg: PgServer, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    ssh_fleet, peers = fleet
    db = private_pg.database("claw_clan", TEST_DB_USER, TEST_DB_PASSWORD)
    pg = {
        "host": db.host,
        "port": db.port,
        "database": db.database,
        "user": db.user,
        "password": db.password,
        "poolMin": 1,
        "poolMax": 4,
        "connectTimeoutSeconds": 1,
    }
    home = tmp_path / "home"
    home.mkdir()
    config = daemon_config(ssh_fleet, peers, interval=INTERVAL, pg=pg)
    (home / "config.json").write_text(json.dumps(config))
    (home / "config.json").chmod(0o600)

    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=ready")
        for gid in peers:
            await daemon.wait_incident(gid, "online", 10)

        async def rows_growing() -> bool:
            return await _ping_rows(db.dsn) >= 30

        await _until("pings reach PostgreSQL", rows_growing, 15)

        # SIGKILL the server in the middle of sustained writes; away for 10 s.
        await asyncio.to_thread(private_pg.kill)
        killed_at = time.monotonic()
        await peers["gw-k1"].stop()  # incidents while PostgreSQL is away
        await daemon.wait_incident("gw-k1", "offline", 5)
        await peers["gw-k1"].start()
        await daemon.wait_incident("gw-k1", "recovery", 5)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - killed_at)))
        live = json.loads(daemon.cli("status", "--live", "--json").stdout)
        assert live["postgres"] != "connected", live["postgres"]
        sent_during_outage = int(live["pinger"]["pings_sent"])
        await asyncio.to_thread(private_pg.start_again)

        async def caught_up() -> bool:
            return await _ping_rows(db.dsn) >= sent_during_outage

        await _until("the spool replays after the restart", caught_up, 20)
        await asyncio.sleep(1.0)  # a few more rounds straight to the database
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log[-3000:]
    at = daemon.log.find("Traceback")
    assert at < 0, daemon.log[max(0, at - 1500) : at + 2500]

    assert_store_parses(home)
    keys = incident_keys(home)
    events = daemon.incidents()
    assert ("gw-k1", "offline") in events and ("gw-k1", "recovery") in events
    per_peer = await assert_pg_exactly_once(db.dsn, keys)
    sent = logged_int(daemon.log, "pinger_stopped", "pings_sent")
    assert sum(per_peer.values()) == sent, (per_peer, sent)
    assert set(per_peer) == set(peers)

    conn = await asyncpg.connect(db.dsn, timeout=10)
    try:
        # Nothing in incident_log that the daemon did not record (evidence-only reports
        # of an event already recorded are not rows there).
        unknown = await conn.fetchval(
            "SELECT count(*) FROM incident_log WHERE client_key::text <> ALL($1::text[])", keys
        )
        assert unknown == 0
        for gid in peers:
            stamps = [
                r["timestamp"]
                for r in await conn.fetch(
                    'SELECT "timestamp" FROM ping_history WHERE target_gateway = $1 ORDER BY 1',
                    gid,
                )
            ]
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
            assert max(gaps) <= MAX_GAP_SECONDS, (gid, max(gaps))
            covered = (stamps[-1] - stamps[0]).total_seconds()
            assert covered >= OUTAGE_SECONDS, (gid, covered)
    finally:
        await conn.close(timeout=5)
    spool = home / "spool" / "pg-spool.jsonl"
    assert not spool.exists() or spool.stat().st_size == 0
