"""Proves the PostgreSQL fixtures work against a real server."""

from __future__ import annotations

import asyncpg
import pytest
from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, PgDatabase, PgServer


async def test_pg_db_connects_as_claw_and_creates_table(pg_db: PgDatabase) -> None:
    assert pg_db.user == TEST_DB_USER
    conn = await asyncpg.connect(pg_db.dsn)
    try:
        assert await conn.fetchval("SELECT current_user") == TEST_DB_USER
        assert await conn.fetchval("SELECT current_database()") == pg_db.database
        await conn.execute("CREATE TABLE probe (id int PRIMARY KEY, name text NOT NULL)")
        await conn.execute("INSERT INTO probe VALUES (1, 'one')")
        assert await conn.fetchval("SELECT name FROM probe WHERE id = 1") == "one"
    finally:
        await conn.close()


async def test_wrong_password_is_refused(pg_db: PgDatabase) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        conn = await asyncpg.connect(
            host=pg_db.host,
            port=pg_db.port,
            database=pg_db.database,
            user=pg_db.user,
            password="not-" + pg_db.password,
        )
        await conn.close()


async def test_private_pg_survives_kill_and_restart(private_pg: PgServer) -> None:
    db = private_pg.database("claw_clan", TEST_DB_USER, TEST_DB_PASSWORD)
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute("CREATE TABLE survivor (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO survivor VALUES (42)")
    finally:
        await conn.close()

    private_pg.kill()
    assert not private_pg.is_running()
    with pytest.raises(OSError):
        await asyncpg.connect(db.dsn, timeout=5)

    private_pg.start_again()
    assert private_pg.is_running()
    conn = await asyncpg.connect(db.dsn)
    try:
        assert await conn.fetchval("SELECT id FROM survivor") == 42
    finally:
        await conn.close()
