"""Shared pieces of the backup tests (no tests here): databases with rows, a role with
CREATEDB, settings, and a fake `pg_dump` that records its argv/environment and then runs
the real one (optionally after a delay, or reporting an old version instead)."""

from __future__ import annotations

import io
import json
import shlex
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_pg import connect
from pgserver import BasePg, PgDatabase

from clawd.act.backup.pgtools import find_bin_dir
from clawd.config.load import settings_from_data
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging
from clawd.keep.store.migrations import migrate

CDB_ROLE = "claw_backup_cdb"
CDB_PASSWORD = "Bk-pw-5e1d-secret"  # distinctive: searched for in argv, logs, names
PING_ROWS = 2_000

REAL_BIN = find_bin_dir(None)


@pytest.fixture
def cdb_db(pg_server: BasePg) -> Iterator[PgDatabase]:
    """A database owned by a role with CREATEDB (so verify-restore can run)."""
    pg_server.create_role(CDB_ROLE, CDB_PASSWORD)
    pg_server.execute(f"ALTER ROLE {CDB_ROLE} CREATEDB")
    name = f"claw_bk_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name, owner=CDB_ROLE)
    try:
        yield pg_server.database(name, CDB_ROLE, CDB_PASSWORD)
    finally:
        pg_server.drop_database(name)


async def fill(db: PgDatabase, pings: int = PING_ROWS) -> dict[str, int]:
    """Migrate and write rows into all five tables; their counts."""
    async with connect(db) as conn:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO fleet_instances (gateway_id, name) VALUES ('gw-a', 'a'), ('gw-b', 'b')"
        )
        await conn.execute("INSERT INTO peer_status (gateway_id, status) VALUES ('gw-b', 'online')")
        await conn.execute(
            "INSERT INTO ping_history (source_gateway, target_gateway, success, response_ms) "
            "SELECT 'gw-a', 'gw-b', g % 3 <> 0, g % 500 FROM generate_series(1, $1) AS g",
            pings,
        )
        await conn.execute(
            "INSERT INTO incident_log (gateway_id, event_type, details) "
            """VALUES ('gw-b', 'offline', '{"n": 1}'), ('gw-b', 'recovery', NULL)"""
        )
        await conn.execute(
            "INSERT INTO skill_audit (gateway_id, skill_name, action) "
            "VALUES ('gw-a', 'weather', 'install')"
        )
    return await counts(db)


async def counts(db: PgDatabase) -> dict[str, int]:
    tables = ("fleet_instances", "peer_status", "ping_history", "incident_log", "skill_audit")
    async with connect(db) as conn:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}


async def scratch_databases(db: PgDatabase) -> list[str]:
    async with connect(db) as conn:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'claw\\_clan\\_verify\\_%'"
        )
    return [r["datname"] for r in rows]


def backup_settings(
    home: Path, db: PgDatabase | None = None, *, backend: str = "postgres", **backup: Any
) -> Settings:
    data: dict[str, Any] = {
        "backend": backend if db is not None else "json",
        "home": str(home),
        "instance": {"gatewayId": "gw-a", "name": "a", "sshUser": "claw"},
        "backup": {"lockWaitSeconds": 5, **backup},
    }
    if db is not None:
        data["postgres"] = {
            "host": db.host,
            "port": db.port,
            "database": db.database,
            "user": db.user,
            "password": db.password,
            "connectTimeoutSeconds": 5,
        }
    home.mkdir(parents=True, exist_ok=True)
    return settings_from_data(data, environ={})


def write_json_store(home: Path, tag: str = "v1") -> None:
    """A small JSON store, every file marked with `tag`."""
    (home / "peers").mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"backend": "json", "tag": tag}))
    (home / "state.json").write_text(
        json.dumps({"gatewayId": "gw-a", "sshUser": "claw", "tag": tag})
    )
    (home / "fleet.json").write_text(json.dumps({"leader": "gw-a", "tag": tag}))
    (home / "peers" / "gw-b.json").write_text(
        json.dumps({"name": "b", "status": "online", "tag": tag})
    )
    (home / "incidents.jsonl").write_text(json.dumps({"event": "offline", "tag": tag}) + "\n")
    (home / "skill_audit.jsonl").write_text(json.dumps({"skill": "x", "tag": tag}) + "\n")
    (home / "spool").mkdir(exist_ok=True)
    (home / "spool" / "000001.jsonl").write_text("spooled\n")


class FakeBin:
    """A pg_bin_dir whose pg_dump is a recording wrapper; pg_restore is the real one."""

    def __init__(self, root: Path, *, delay: float = 0.0, version: str | None = None) -> None:
        self.dir = root / "fakebin"
        self.calls = root / "calls"
        self.dir.mkdir(parents=True)
        self.calls.mkdir()
        real = REAL_BIN / "pg_dump"
        version_line = (
            f"echo 'pg_dump (PostgreSQL) {version}'; exit 0"
            if version
            else f"exec {shlex.quote(str(real))} --version"
        )
        script = f"""#!/bin/sh
calls={shlex.quote(str(self.calls))}
if [ "$1" = "--version" ]; then {version_line}; fi
for a in "$@"; do printf '%s\\n' "$a"; done > "$calls/$$.argv"
env > "$calls/$$.env"
sleep {delay}
exec {shlex.quote(str(real))} "$@"
"""
        wrapper = self.dir / "pg_dump"
        wrapper.write_text(script)
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        (self.dir / "pg_restore").symlink_to(REAL_BIN / "pg_restore")

    def dumps(self) -> list[int]:
        """pids of the pg_dump runs so far (not counting --version probes)."""
        return sorted(int(p.stem) for p in self.calls.glob("*.argv"))

    def argv(self, pid: int) -> list[str]:
        return (self.calls / f"{pid}.argv").read_text().splitlines()

    def env(self, pid: int) -> dict[str, str]:
        lines = (self.calls / f"{pid}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


def capture_logs() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("debug", stream)
    return stream


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_backup_daemon_config(home: Path, db: PgDatabase, bin_dir: Path, **backup: Any) -> None:
    """config.json (0600) for a `clawd run` on `db` whose backups use the tools in `bin_dir`."""
    home.mkdir(parents=True, exist_ok=True)
    data = {
        "backend": "postgres",
        "postgres": {
            "host": db.host,
            "port": db.port,
            "database": db.database,
            "user": db.user,
            "password": db.password,
        },
        "instance": {"gatewayId": "gw-a", "name": "alpha", "sshUser": "claw"},
        "discovery": {"enabled": False},
        "backup": {"schedule": "24h", "pgBinDir": str(bin_dir), **backup},
    }
    (home / "config.json").write_text(json.dumps(data))
    (home / "config.json").chmod(0o600)
