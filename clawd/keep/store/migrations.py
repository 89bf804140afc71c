"""Applies `migrations/NNN-*.sql` once each, recorded in a table of clawd's own."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from clawd.config.permissions import PRIVATE_DIR, PRIVATE_FILE, make_private
from clawd.core.atomic import write_atomic
from clawd.core.errors import MigrationError
from clawd.core.lock_ids import MIGRATION_LOCK_ID

log = structlog.get_logger("clawd.migrations")

Conn = asyncpg.Connection | PoolConnectionProxy

MIGRATIONS_TABLE = "clawd_schema_migrations"
_NAME = re.compile(r"^\d{3,}-[\w.-]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The packaged copy in an installed wheel, else the checkout's top-level folder."""
    packaged = resources.files("clawd") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    folder = directory or migrations_dir()
    if not folder.is_dir():
        raise MigrationError(f"migrations folder not found at {folder}")
    files = sorted(p for p in folder.iterdir() if _NAME.match(p.name))
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


def install_migration_files(home: Path) -> list[Path]:
    """Copy the schema files to `<home>/migrations`, where the seed's
    `psql -f ~/.openclaw/claw-clan/migrations/001-initial-schema.sql` expects them.

    Blocking; only files that are missing or differ are written. Private like everything
    clawd writes (folder 0700, files 0600, whatever the umask); copies an older clawd made
    0755/0644 are tightened.
    """
    target = home / "migrations"
    target.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    make_private(target, PRIVATE_DIR)
    written: list[Path] = []
    for migration in load_migrations():
        path = target / migration.name
        if not path.exists() or path.read_text(encoding="utf-8") != migration.sql:
            write_atomic(path, migration.sql.encode(), mode=PRIVATE_FILE)
            written.append(path)
        make_private(path, PRIVATE_FILE)
    return written


async def applied_migrations(conn: Conn) -> dict[str, str]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", MIGRATIONS_TABLE)
    if not exists:
        return {}
    rows = await conn.fetch(f"SELECT name, checksum FROM {MIGRATIONS_TABLE}")  # noqa: S608
    return {r["name"]: r["checksum"] for r in rows}


async def migrate(conn: Conn, directory: Path | None = None) -> list[str]:
    """Apply pending migrations in order; returns the names applied now.

    Safe to run from several machines at once: an advisory lock makes the
    second runner wait, then find nothing left to do.
    """
    # Reading the files is blocking (and a slow disk would stall every ping): off the loop.
    migrations = await asyncio.to_thread(load_migrations, directory)
    done = await applied_migrations(conn)
    if all(m.name in done for m in migrations):
        return []  # nothing to create: works with DML-only rights
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            " name TEXT PRIMARY KEY, checksum TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = await applied_migrations(conn)
        applied: list[str] = []
        for migration in migrations:
            if migration.name in done:
                if done[migration.name] != migration.checksum:
                    log.warning("migration_changed_after_apply", migration=migration.name)
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (name, checksum) VALUES ($1, $2)",  # noqa: S608
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
            log.info("migration_applied", migration=migration.name)
            applied.append(migration.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
