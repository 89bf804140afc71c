"""`clawd run` against three SSH peers on loopback, with PostgreSQL: what a user watches.

A peer's SSH server stops -> offline incident within interval x missed + 2 s; it comes
back -> recovery; the leader stops -> leader_change; SIGTERM -> exit 0 and every row in
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from daemonproc import DaemonProcess
from pgserver import PgDatabase
from sshpeers import SshFleet, SshPeer

INTERVAL = 0.3
MISSED = 3
DETECT_WITHIN = INTERVAL * MISSED + 2.0


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        peers = {
            "gw-b": await ssh_fleet.add_peer("127.0.0.2"),
            "gw-c": await ssh_fleet.add_peer("127.0.0.3"),
            "gw-d": await ssh_fleet.add_peer("127.0.0.4"),
        }
        (keys / "known_hosts").write_text(ssh_fleet.known_hosts_text())
        yield ssh_fleet, peers


async def _fleet_json_leader(home: Path, expected: str) -> str:
    """fleet.json's leader once it names `expected` (it follows the leader_change incident
    on the keeper's next write: a bounded wait), else the last one read."""
    leader = ""
    for _ in range(100):
        leader = str(json.loads((home / "fleet.json").read_text())["leader"])
        if leader == expected:
            break
        await asyncio.sleep(0.1)
    return leader


async def test_fleet_story_end_to_end(
    tmp_path: Path, fleet: tuple[SshFleet, dict[str, SshPeer]], pg_db: PgDatabase
) -> None:
    ssh_fleet, peers = fleet
    home = tmp_path / "home"
    config = {
        "backend": "postgres",
        "postgres": {
            "host": pg_db.host,
            "port": pg_db.port,
            "database": pg_db.database,
            "user": pg_db.user,
            "password": pg_db.password,
            "poolMin": 1,
            "poolMax": 4,
        },
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 5, "sshUser": "claw"},
        "peers": [
            {
                "name": f"name-{gid}",
                "gatewayId": gid,
                "ip": p.address,
                "sshPort": p.port,
                "sshUser": "claw",
                "leadNumber": lead,
            }
            for (gid, p), lead in zip(peers.items(), (1, 7, 8), strict=True)
        ],
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25, "offlineAfterMissed": MISSED},
        "ssh": {
            "knownHosts": str(ssh_fleet.directory / "known_hosts"),
            "clientKeys": [str(ssh_fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 0.5,
        },
        "discovery": {"enabled": False},
        # Its peers are test SSH servers that run no clawd and cannot hold the leader
        # lease; this story is about the fenced epochs, as in a fleet without the lease.
        "storage": {
            "flushIntervalSeconds": 0.05,
            "retryInitialSeconds": 0.2,
            "leaderLease": False,
        },
    }
    home.mkdir()
    (home / "config.json").write_text(json.dumps(config))
    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=ready")
        for gid in peers:
            await daemon.wait_incident(gid, "online", 10)
        await daemon.wait_incident("gw-b", "leader_change", 5)  # lead 1 beats self 5
        assert await _fleet_json_leader(home, "gw-b") == "gw-b"

        await peers["gw-c"].stop()
        took = await daemon.wait_incident("gw-c", "offline", DETECT_WITHIN + 1)
        assert took <= DETECT_WITHIN
        peer_file = json.loads((home / "peers" / "gw-c.json").read_text())
        assert peer_file["status"] == "offline" and peer_file["missedPings"] >= MISSED

        await peers["gw-c"].start()
        await daemon.wait_incident("gw-c", "recovery", 10)
        assert daemon.incidents().count(("gw-c", "offline")) == 1  # one per transition

        await peers["gw-b"].stop()  # the leader goes away
        # The first leader_change naming gw-a: the election at start named gw-b only.
        await daemon.wait_incident("gw-a", "leader_change", DETECT_WITHIN + 1)
        assert await _fleet_json_leader(home, "gw-a") == "gw-a"
        await peers["gw-b"].start()
        await daemon.wait_incident("gw-b", "recovery", 10)
        await daemon.wait_incident("gw-b", "leader_change", 5, occurrence=2)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    assert "Traceback" not in daemon.log
    assert "event=stopped" in daemon.log

    # Everything the daemon recorded is in PostgreSQL after a graceful stop.
    conn = await asyncpg.connect(pg_db.dsn)
    try:
        pings = await conn.fetch(
            "SELECT target_gateway, count(*) AS n, bool_or(success) AS ok, "
            "bool_or(NOT success) AS failed FROM ping_history GROUP BY 1"
        )
        by_target = {r["target_gateway"]: r for r in pings}
        assert set(by_target) == set(peers)
        assert by_target["gw-c"]["failed"] and by_target["gw-c"]["ok"]
        incidents = await conn.fetch(
            "SELECT gateway_id, event_type FROM incident_log ORDER BY timestamp"
        )
        assert sorted((r["gateway_id"], r["event_type"]) for r in incidents) == sorted(
            daemon.incidents()
        )
        rows = await conn.fetch("SELECT gateway_id, status FROM peer_status")
        statuses = {r["gateway_id"]: r["status"] for r in rows}
        assert statuses == {"gw-b": "online", "gw-c": "online", "gw-d": "online"}
    finally:
        await conn.close()
    spool = home / "spool" / "pg-spool.jsonl"
    assert not spool.exists() or spool.stat().st_size == 0
