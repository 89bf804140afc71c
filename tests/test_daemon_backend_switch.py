"""Switching `backend` in a running daemon's config.json: nothing lost either way."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
from daemonproc import DaemonProcess
from pgserver import PgDatabase


def _config(home: Path, db: PgDatabase, backend: str) -> None:
    data = {
        "backend": backend,
        "postgres": {
            "host": db.host,
            "port": db.port,
            "database": db.database,
            "user": db.user,
            "password": db.password,
            "poolMin": 1,
            "poolMax": 2,
        },
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 5},
        # Nothing listens there: the peer goes offline, which gives us incidents.
        "peers": [{"name": "gw-dead", "ip": "127.0.0.9", "sshPort": 1}],
        "ping": {"intervalSeconds": 0.2, "timeoutSeconds": 0.15, "offlineAfterMissed": 2},
        "ssh": {
            "connectTimeoutSeconds": 0.3,
            "reconnectInitialSeconds": 0.1,
            "reconnectMaxSeconds": 0.2,
        },
        "discovery": {"enabled": False},
        # Its peer runs no clawd and cannot hold the leader lease (see test_fleet_lease.py).
        "storage": {"flushIntervalSeconds": 0.05, "leaderLease": False},
    }
    tmp = home / ".config.json.new"
    tmp.write_text(json.dumps(data))
    tmp.replace(home / "config.json")


async def _rows(db: PgDatabase, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db.dsn)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def _wait_rows(db: PgDatabase, sql: str, want: int, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.1)):
        try:
            if len(await _rows(db, sql)) >= want:
                return
        except asyncpg.UndefinedTableError:
            pass  # the daemon connects and migrates in the background
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {want} rows for {sql}")


async def test_switch_to_postgres_and_back_while_running(tmp_path: Path, pg_db: PgDatabase) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _config(home, pg_db, "json")
    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=ready")
        await daemon.wait_incident("gw-dead", "offline", 10)
        json_era = list(daemon.incidents())

        _config(home, pg_db, "postgres")
        await daemon.await_log("backend=postgres", 10)
        # What was recorded while on JSON arrives too, then live pings follow.
        await _wait_rows(pg_db, "SELECT 1 FROM incident_log", len(json_era))
        await _wait_rows(pg_db, "SELECT 1 FROM ping_history WHERE target_gateway = 'gw-dead'", 3)
        await _wait_rows(pg_db, "SELECT 1 FROM fleet_instances WHERE gateway_id = 'gw-dead'", 1)

        _config(home, pg_db, "json")
        await daemon.await_log("event=backend_switched backend=json", 10)
        pings_after_switch = len(await _rows(pg_db, "SELECT 1 FROM ping_history"))
        await asyncio.sleep(1.0)
        # Back on JSON: PostgreSQL is left alone, the JSON files keep going.
        assert len(await _rows(pg_db, "SELECT 1 FROM ping_history")) == pings_after_switch
        peer = json.loads((home / "peers" / "gw-dead.json").read_text())
        assert peer["status"] == "offline"
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    stored = await _rows(pg_db, "SELECT gateway_id, event_type FROM incident_log")
    keys = await _rows(
        pg_db, "SELECT count(*) AS n, count(DISTINCT client_key) AS d FROM incident_log"
    )
    assert keys[0]["n"] == keys[0]["d"]  # nothing twice
    assert sorted((r["gateway_id"], r["event_type"]) for r in stored) == sorted(json_era)
