"""pg_dump --format=custom of the configured database, with row counts from the same snapshot.

clawd opens a REPEATABLE READ transaction, exports its snapshot and hands it to
pg_dump (`--snapshot`); the five tables are counted in that transaction while the
dump runs, so the manifest's counts are exactly what the dump holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from clawd.act.backup.errors import BackupError
from clawd.act.backup.pgtools import PgTools, pg_env, run_tool
from clawd.config.sections import PostgresSettings
from clawd.keep.store.pg_store import TABLES

LOCK_WAIT = "60s"  # never queue behind a migration's exclusive lock for long


@dataclass(frozen=True, slots=True)
class DumpInfo:
    pg_dump_version: str
    server_version: str
    compression: str
    row_counts: dict[str, int]


def compression(tools: PgTools, wanted: str) -> tuple[str, list[str]]:
    """(name for the manifest, pg_dump arguments)."""
    zstd_ok = tools.major >= 16
    if wanted == "none":
        return "none", ["--compress=0"]
    if wanted == "zstd" and not zstd_ok:
        raise BackupError(
            f"backup.compress is zstd, but pg_dump {tools.version} ({tools.pg_dump}) supports "
            "only gzip (zstd needs pg_dump 16 or newer); set backup.compress to auto or gzip"
        )
    if wanted == "zstd" or (wanted == "auto" and zstd_ok):
        return "zstd", ["--compress=zstd"]
    # pg_dump's own default for the custom format: gzip at zlib's default level.
    return "gzip", ["--compress=gzip"] if zstd_ok else []


def check_versions(
    tools: PgTools, server_major: int, server_full: str, pg: PostgresSettings
) -> None:
    """pg_dump refuses to dump a server newer than itself: say so before starting."""
    if tools.major < server_major:
        raise BackupError(
            f"pg_dump {tools.version} ({tools.pg_dump}) is older than the PostgreSQL "
            f"{server_full} server at {pg.target()} and cannot dump it; install pg_dump "
            f"{server_major} or newer (Debian/Ubuntu: apt-get install "
            f"postgresql-client-{server_major}) and, if clawd does not find it, set "
            f"backup.pgBinDir (e.g. /usr/lib/postgresql/{server_major}/bin)"
        )


async def server_version(conn: asyncpg.Connection) -> tuple[int, str]:
    full = str(await conn.fetchval("SHOW server_version"))
    return conn.get_server_version().major, full.split(" ")[0]


async def count_rows(conn: asyncpg.Connection) -> dict[str, int]:
    """count(*) of each of the five tables that exists (in the caller's transaction)."""
    present = await conn.fetch(
        "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(quote_ident(t)) IS NOT NULL",
        list(TABLES),
    )
    counts: dict[str, int] = {}
    for row in present:
        table = row["t"]
        counts[table] = int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))  # noqa: S608
    return counts


async def dump(
    conn: asyncpg.Connection,
    pg: PostgresSettings,
    tools: PgTools,
    *,
    compress: str,
    out_fd: int,
) -> DumpInfo:
    """Dump into `out_fd` (a 0600 partial file) from `conn`'s exported snapshot."""
    major, full = await server_version(conn)
    check_versions(tools, major, full, pg)
    method, compress_args = compression(tools, compress)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
        argv = [
            str(tools.pg_dump),
            "--format=custom",
            *compress_args,
            f"--snapshot={snapshot}",
            f"--lock-wait-timeout={LOCK_WAIT}",
            "--no-password",
        ]
        dumping = asyncio.ensure_future(
            run_tool(
                argv,
                pg_env(pg),
                what="pg_dump",
                stdout=out_fd,
                secret=pg.password.get_secret_value(),
            )
        )
        try:
            counts = await count_rows(conn)
        except BaseException:
            dumping.cancel()
            await asyncio.wait({dumping})
            raise
        await dumping  # the exporting transaction stays open until pg_dump is done
    return DumpInfo(tools.version, full, method, counts)
