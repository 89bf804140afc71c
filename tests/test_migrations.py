"""Schema migrations against a real PostgreSQL: psql-compatible, recorded once, locked."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest
from helpers_pg import connect
from pgserver import PgDatabase

from clawd.core.lock_ids import MIGRATION_LOCK_ID
from clawd.keep.store.migrations import MIGRATIONS_TABLE, load_migrations, migrate, migrations_dir

INITIAL = "001-initial-schema.sql"
# Every shipped file, in order (the first two are the ones the tests below rely on).
ALL_MIGRATIONS = [m.name for m in load_migrations()]
assert ALL_MIGRATIONS[:2] == [INITIAL, "002-idempotency-keys.sql"]

TZ = "timestamp with time zone"

# The five tables of the seed's "Schema Overview", column by column.
SEED_SCHEMA: dict[str, dict[str, str]] = {
    "fleet_instances": {
        "gateway_id": "text",
        "name": "text",
        "lead_number": "integer",
        "ip": "text",
        "ssh_user": "text",
        "version": "text",
        "registered_at": TZ,
        "github_repo": "text",
        "updated_at": TZ,
    },
    "peer_status": {
        "gateway_id": "text",
        "status": "text",
        "last_seen": TZ,
        "last_ping_attempt": TZ,
        "missed_pings": "integer",
        "ssh_connectivity": "boolean",
        "claw_clan_installed": "boolean",
        "mdns_broadcasting": "boolean",
        "updated_at": TZ,
    },
    "ping_history": {
        "id": "integer",
        "source_gateway": "text",
        "target_gateway": "text",
        "success": "boolean",
        "timestamp": TZ,
        "response_ms": "integer",
    },
    "incident_log": {
        "id": "integer",
        "gateway_id": "text",
        "event_type": "text",
        "details": "jsonb",
        "timestamp": TZ,
    },
    "skill_audit": {
        "id": "integer",
        "gateway_id": "text",
        "skill_name": "text",
        "action": "text",
        "source": "text",
        "timestamp": TZ,
    },
}


def _psql_file(db: PgDatabase, path: Path) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql")
    assert psql is not None, "psql not found on PATH"
    env = {**os.environ, "PGPASSWORD": db.password, "PGCONNECT_TIMEOUT": "10"}
    connection = ["-h", db.host, "-p", str(db.port), "-U", db.user, "-d", db.database]
    return subprocess.run(
        [psql, "-X", *connection, "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def _columns(conn: asyncpg.Connection) -> dict[str, dict[str, str]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = ANY($1::text[])",
        list(SEED_SCHEMA),
    )
    found: dict[str, dict[str, str]] = {}
    for r in rows:
        found.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    return found


async def _recorded(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY name")
    return [r["name"] for r in rows]


async def test_initial_schema_runs_twice_with_psql_then_runner_records_both(
    pg_db: PgDatabase,
) -> None:
    initial = await asyncio.to_thread(migrations_dir) / INITIAL
    for attempt in (1, 2):
        proc = await asyncio.to_thread(_psql_file, pg_db, initial)
        assert proc.returncode == 0, f"psql run {attempt}: {proc.stderr}"
        assert "ERROR" not in proc.stderr, proc.stderr

    async with connect(pg_db) as conn:
        # psql gave exactly the seed's five tables and columns.
        assert await _columns(conn) == SEED_SCHEMA
        assert await conn.fetchval("SELECT to_regclass($1)", MIGRATIONS_TABLE) is None

        assert await migrate(conn) == ALL_MIGRATIONS
        assert await _recorded(conn) == ALL_MIGRATIONS
        assert await migrate(conn) == []
        assert await _recorded(conn) == ALL_MIGRATIONS

        columns = await _columns(conn)
    # The runner only adds: client keys, and a 64-bit ping id.
    for table, seed_columns in SEED_SCHEMA.items():
        for column, data_type in seed_columns.items():
            if (table, column) == ("ping_history", "id"):
                assert columns[table][column] == "bigint"
            else:
                assert columns[table][column] == data_type, f"{table}.{column}"
    for table in ("ping_history", "incident_log", "skill_audit"):
        assert columns[table]["client_key"] == "uuid"


async def test_seed_keys_and_foreign_key(pg_db: PgDatabase) -> None:
    async with connect(pg_db) as conn:
        await migrate(conn)
        pk = await conn.fetch(
            "SELECT tc.table_name, kcu.column_name"
            " FROM information_schema.table_constraints tc"
            " JOIN information_schema.key_column_usage kcu"
            "   ON tc.constraint_name = kcu.constraint_name AND tc.table_name = kcu.table_name"
            " WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public'"
        )
        fk_target = await conn.fetchval(
            "SELECT confrelid::regclass::text FROM pg_constraint"
            " WHERE conrelid = 'peer_status'::regclass AND contype = 'f'"
        )
        await conn.execute(
            "INSERT INTO ping_history (source_gateway, target_gateway, success)"
            " VALUES ('a', 'b', true)"
        )
        first_id = await conn.fetchval("SELECT id FROM ping_history")
    assert {(r["table_name"], r["column_name"]) for r in pk} >= {
        ("fleet_instances", "gateway_id"),
        ("peer_status", "gateway_id"),
        ("ping_history", "id"),
        ("incident_log", "id"),
        ("skill_audit", "id"),
    }
    assert fk_target == "fleet_instances"
    assert first_id == 1  # the SERIAL id still auto-increments


async def test_concurrent_migrators_both_succeed_and_record_once(pg_db: PgDatabase) -> None:
    async with connect(pg_db) as holder, connect(pg_db) as c1, connect(pg_db) as c2:
        # Hold the lock so that both runners are really waiting at the same time.
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        t1 = asyncio.create_task(migrate(c1))
        t2 = asyncio.create_task(migrate(c2))
        try:
            for _ in range(200):
                waiting = await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                if waiting == 2:
                    break
                await asyncio.sleep(0.02)
            assert waiting == 2, "both migrators should wait on the advisory lock"
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        r1, r2 = await asyncio.wait_for(asyncio.gather(t1, t2), timeout=20)
        assert sorted([*r1, *r2]) == ALL_MIGRATIONS
        assert [] in (r1, r2)
        rows = await holder.fetch(
            f"SELECT name, count(*) AS n FROM {MIGRATIONS_TABLE} GROUP BY name ORDER BY name"
        )
        assert [(r["name"], r["n"]) for r in rows] == [(m, 1) for m in ALL_MIGRATIONS]
        # Nobody keeps the lock afterwards.
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_ID)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        (
            "INSERT INTO incident_log (gateway_id, event_type, details) VALUES ($1, $2, '{}')",
            ("gw-a", "exploded"),
        ),
        (
            "INSERT INTO skill_audit (gateway_id, skill_name, action) VALUES ($1, $2, $3)",
            ("gw-a", "weather", "upgrade"),
        ),
        (
            "INSERT INTO peer_status (gateway_id, status) VALUES ($1, $2)",
            ("gw-a", "sleeping"),
        ),
    ],
    ids=["incident_event_type", "skill_action", "peer_status"],
)
async def test_check_constraints_reject_bad_values(
    pg_db: PgDatabase, sql: str, args: tuple[str, ...]
) -> None:
    async with connect(pg_db) as conn:
        await migrate(conn)
        await conn.execute("INSERT INTO fleet_instances (gateway_id, name) VALUES ('gw-a', 'a')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(sql, *args)
        # The allowed values of the seed go in.
        for event in ("offline", "online", "recovery", "reinstall", "skill_sync", "leader_change"):
            await conn.execute(
                "INSERT INTO incident_log (gateway_id, event_type) VALUES ('gw-a', $1)", event
            )
        for action in ("install", "update", "remove"):
            await conn.execute(
                "INSERT INTO skill_audit (gateway_id, skill_name, action) VALUES ('gw-a','s',$1)",
                action,
            )
        for status in ("online", "offline", "unresponsive", "unknown"):
            await conn.execute(
                "INSERT INTO peer_status (gateway_id, status) VALUES ('gw-a', $1)"
                " ON CONFLICT (gateway_id) DO UPDATE SET status = EXCLUDED.status",
                status,
            )
