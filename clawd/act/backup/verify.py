"""Is a backup good? Checksum against the manifest, a full read of every file
(`pg_restore -f /dev/null`: `--list` alone passes a truncated dump because the table of
contents is at the front), and a full restore into a scratch database whose row counts
must equal the manifest's.

The scratch database is named by clawd (`claw_clan_verify_<random>`), recorded in the
backup directory, created here and dropped here (or, after a crash, at the next start);
the main database is never dropped or truncated.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import asyncpg
import structlog

from clawd.act.backup import archive
from clawd.act.backup import scratch as markers
from clawd.act.backup.errors import BackupError
from clawd.act.backup.files import sha256_of
from clawd.act.backup.manifest import FileEntry, Manifest, Verification
from clawd.act.backup.names import SCRATCH_DB
from clawd.act.backup.pgdump import count_rows
from clawd.act.backup.pgtools import PgTools, connect, dbname_arg, pg_env, run_tool
from clawd.config.sections import PostgresSettings
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import utcnow

log = structlog.get_logger("clawd.act.backup")

NO_CREATEDB = "skipped: role lacks CREATEDB"


async def checksum(path: Path, entry: FileEntry) -> str:
    try:
        size, digest = await asyncio.to_thread(sha256_of, path)
    except FileNotFoundError:
        return "failed: file missing"
    except OSError as exc:
        return f"failed: cannot read: {exc.strerror or exc}"
    if size != entry.size:
        return f"failed: size {size} bytes, manifest says {entry.size}"
    if digest != entry.sha256:
        return "failed: sha256 differs from the manifest"
    return "ok"


async def read_dump(tools: PgTools, path: Path) -> str:
    try:
        await run_tool(
            [str(tools.pg_restore), "--file=/dev/null", str(path)],
            None,
            what="pg_restore (full read)",
        )
    except BackupError as exc:
        return f"failed: {exc}"
    return "ok"


async def read_archive(path: Path) -> str:
    try:
        await asyncio.to_thread(archive.read_check, path)
    except BackupError as exc:
        return f"failed: {exc}"
    return "ok"


def scratch_name(pg: PostgresSettings) -> str:
    name = f"claw_clan_verify_{secrets.token_hex(6)}"
    assert SCRATCH_DB.match(name) and name != pg.database
    return name


async def drop_scratch(conn: asyncpg.Connection, name: str, pg: PostgresSettings) -> bool:
    """Drop a database clawd created for verification; refuses any other name.

    False (and one error line with the command to do it by hand) when it could not."""
    if not SCRATCH_DB.match(name) or name == pg.database:
        raise BackupError(f"refusing to drop database {name!r}: clawd did not create it")
    force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
    except (asyncpg.PostgresError, OSError) as exc:
        log.error(
            "scratch_database_left_behind",
            database=name,
            reason=str(exc),
            fix=f"dropdb -h {pg.host} -p {pg.port} -U {pg.user} {name}",
        )
        return False
    return True


async def drop_leftover_scratch(settings: Settings, ledger: Path) -> None:
    """Drop the scratch databases an interrupted run left (call under the backup lock).

    Only names recorded in `ledger` (this clawd created them) are dropped; if PostgreSQL
    cannot be reached, they stay recorded and the next backup tries again.
    """
    leftovers = await asyncio.to_thread(markers.marked_scratch, ledger)
    if not leftovers:
        return
    pg = settings.postgres
    try:
        conn = await connect(pg)
    except ClawdError as exc:
        log.warning(
            "scratch_database_not_dropped_yet",
            databases=",".join(leftovers),
            reason=str(exc),
            action="tried again at the next backup",
        )
        return
    try:
        for name in leftovers:
            if await drop_scratch(conn, name, pg):
                await asyncio.to_thread(markers.unmark_scratch, ledger, name)
                log.warning(
                    "scratch_database_dropped",
                    database=name,
                    why="left by a verification that was interrupted",
                )
    finally:
        await conn.close()


async def _can_create_db(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    )


async def restore_scratch(
    pg: PostgresSettings,
    tools: PgTools,
    path: Path,
    expected: dict[str, int] | None,
    *,
    ledger: Path,
) -> tuple[str, dict[str, int] | None]:
    """Full pg_restore into a fresh scratch database, counts compared; (result, counts)."""
    try:
        conn = await connect(pg)
    except ClawdError as exc:
        return f"failed: {exc}", None
    try:
        if not await _can_create_db(conn):
            return NO_CREATEDB, None
        name = scratch_name(pg)
        # Recorded first: if clawd is killed from here on, the next start drops it.
        await asyncio.to_thread(markers.mark_scratch, ledger, name)
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        try:
            await run_tool(
                [
                    str(tools.pg_restore),
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    "--no-password",
                    dbname_arg(name),
                    str(path),
                ],
                pg_env(pg, database=name),
                what="pg_restore into a scratch database",
                secret=pg.password.get_secret_value(),
            )
            scratch = await connect(pg, database=name)
            try:
                counts = await count_rows(scratch)
            finally:
                await scratch.close()
        finally:
            if await drop_scratch(conn, name, pg):
                await asyncio.to_thread(markers.unmark_scratch, ledger, name)
    except BackupError as exc:
        return f"failed: {exc}", None
    except (ClawdError, asyncpg.PostgresError, OSError) as exc:
        return f"failed: {exc}", None
    finally:
        await conn.close()
    if expected is not None and counts != expected:
        diff = ", ".join(
            f"{t} {expected.get(t)} in manifest, {counts.get(t)} restored"
            for t in sorted(set(expected) | set(counts))
            if expected.get(t) != counts.get(t)
        )
        return f"failed: row counts differ: {diff}", counts
    return "ok", counts


async def verify_set(
    directory: Path,
    manifest: Manifest,
    *,
    pg: PostgresSettings,
    tools: PgTools | None,
    restore: bool,
    ledger: Path,
) -> Verification:
    """Check every file of a backup run; `restore` adds the scratch-database restore."""
    started = time.monotonic()
    sums: list[str] = []
    reads: list[str] = []
    restored: str = "n/a"
    counts: dict[str, int] | None = None
    for entry in manifest.files:
        path = directory / entry.name
        sums.append(await checksum(path, entry))
        if sums[-1] != "ok":
            reads.append("not run")
            continue
        if entry.kind == "json":
            reads.append(await read_archive(path))
            continue
        if tools is None:
            reads.append("failed: pg_restore not available")
            continue
        reads.append(await read_dump(tools, path))
        if not restore:
            restored = "not run"
        elif reads[-1] == "ok":
            restored, counts = await restore_scratch(
                pg, tools, path, manifest.row_counts, ledger=ledger
            )
        else:
            restored = "not run"
    if not manifest.files:
        sums, reads = ["failed: no files"], ["not run"]
    checksum_result = _worst(sums)
    readable = _worst(reads)
    problems = [r for r in (checksum_result, readable, restored) if r.startswith("failed")]
    return Verification(
        ok=not problems,
        at=utcnow().isoformat(),
        checksum=checksum_result,
        readable=readable,
        restore=restored,
        restored_counts=counts,
        duration_s=round(time.monotonic() - started, 3),
        error=problems[0].removeprefix("failed: ") if problems else None,
    )


def _worst(results: list[str]) -> str:
    return next((r for r in results if r != "ok"), "ok")
