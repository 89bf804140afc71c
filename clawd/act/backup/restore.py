"""Put a backup back: a dump into the configured database, or a JSON archive into the home.

Before anything is touched the file is checked (checksum against its manifest, full
read) and the caller confirms a plan naming what will be replaced. A dump is restored
with `pg_restore --clean --if-exists --single-transaction`: all or nothing, and the
database itself is never dropped. A JSON restore moves current files aside.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from clawd.act.backup import archive, catalog, names
from clawd.act.backup.errors import BackupError
from clawd.act.backup.lock import BackupLock
from clawd.act.backup.manifest import Manifest
from clawd.act.backup.pgdump import count_rows
from clawd.act.backup.pgtools import (
    PgTools,
    connect,
    dbname_arg,
    pg_env,
    probe,
    run_tool,
    time_limit,
)
from clawd.act.backup.results import RestoreResult
from clawd.act.backup.verify import checksum, read_dump
from clawd.config.settings import Settings
from clawd.core.model import utcnow

log = structlog.get_logger("clawd.act.backup")

# Gets the plan (what will be replaced); True to go ahead. None = no question (--yes).
Confirm = Callable[[str], bool]


def _counts_text(counts: dict[str, int] | None) -> str:
    if counts is None:
        return "unknown (no manifest)"
    if not counts:
        return "none (no clawd tables)"
    return ", ".join(f"{t} {n}" for t, n in counts.items())


async def _check_file(path: Path, manifest: Manifest | None, tools: PgTools | None) -> None:
    if manifest is not None:
        entry = next(f for f in manifest.files if f.name == path.name)
        result = await checksum(path, entry)
        if result != "ok":
            raise BackupError(f"{path.name}: {result.removeprefix('failed: ')}; not restoring it")
    if tools is not None:
        result = await read_dump(tools, path)
    else:
        try:
            await asyncio.to_thread(archive.read_check, path)
        except BackupError as exc:
            result = f"failed: {exc}"
        else:
            result = "ok"
    if result != "ok":
        raise BackupError(f"{path.name} cannot be read in full, not restoring it: {result}")


def _taken(path: Path, manifest: Manifest | None) -> str:
    if manifest is None:
        return f"{path} (no manifest: age and contents unknown)"
    return f"{path.name}, taken {catalog.local_time(manifest.created)}"


async def _agreed(confirm: Confirm | None, plan: str) -> None:
    """Return if the person agreed to `plan` (or was not asked); else nothing is changed."""
    if confirm is not None and not await asyncio.to_thread(confirm, plan):
        raise BackupError("restore cancelled; nothing was changed")


async def _restore_postgres(
    settings: Settings, path: Path, manifest: Manifest | None, confirm: Confirm | None
) -> RestoreResult:
    pg = settings.postgres
    tools = await probe(settings.backup.pg_bin_dir)
    async with time_limit(settings.backup.timeout_seconds, "checking the backup"):
        await _check_file(path, manifest, tools)
    conn = await connect(pg)
    try:
        before = await count_rows(conn)
    finally:
        await conn.close()
    expected = manifest.row_counts if manifest else None
    plan = (
        f"restore {_taken(path, manifest)}\n"
        f"into database {pg.target()} as user {pg.user}:\n"
        f"  every table in the backup is dropped and recreated from it, in one transaction\n"
        f"  rows now:       {_counts_text(before)}\n"
        f"  rows in backup: {_counts_text(expected)}"
    )
    await _agreed(confirm, plan)
    started = time.monotonic()
    log.warning("restore_started", file=path.name, database=pg.target())
    async with time_limit(settings.backup.timeout_seconds, "pg_restore"):
        await run_tool(
            [
                str(tools.pg_restore),
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--exit-on-error",
                "--no-owner",
                "--no-password",
                dbname_arg(pg.database),
                str(path),
            ],
            pg_env(pg),
            what="pg_restore",
            secret=pg.password.get_secret_value(),
        )
    conn = await connect(pg)
    try:
        after = await count_rows(conn)
    finally:
        await conn.close()
    duration = time.monotonic() - started
    notes: tuple[str, ...] = ()
    if expected is not None and after != expected:
        notes = (f"row counts differ from the manifest: {_counts_text(after)}",)
    log.warning("restore_done", file=path.name, database=pg.target(), duration_s=round(duration, 2))
    return RestoreResult(
        file=path.name,
        kind="postgres",
        target=pg.target(),
        duration_s=duration,
        counts_before=before,
        counts_after=after,
        counts_expected=expected,
        notes=notes,
    )


async def _restore_json(
    settings: Settings, path: Path, manifest: Manifest | None, confirm: Confirm | None
) -> RestoreResult:
    home = settings.home
    async with time_limit(settings.backup.timeout_seconds, "checking the backup"):
        await _check_file(path, manifest, None)
    members = await asyncio.to_thread(archive.read_check, path)
    replaced = archive.plan(home, members)
    plan = (
        f"restore {_taken(path, manifest)}\n"
        f"into {home}: {', '.join(replaced) or 'nothing'}\n"
        f"  current files are moved aside to <name>.pre-restore-<time>, nothing is deleted"
    )
    await _agreed(confirm, plan)
    started = time.monotonic()
    done = await asyncio.to_thread(archive.restore_archive, home, path, utcnow())
    aside = ",".join(done.moved_aside)
    log.warning("restore_done", file=path.name, home=str(home), moved_aside=aside)
    return RestoreResult(
        file=path.name,
        kind="json",
        target=str(home),
        duration_s=time.monotonic() - started,
        restored=tuple(done.restored),
        moved_aside=tuple(done.moved_aside),
    )


async def run_restore(settings: Settings, file: str, confirm: Confirm | None) -> RestoreResult:
    """Restore FILE after `confirm(plan)` (None: no question). BackupError on refusal."""
    directory = names.backup_dir(settings.home)
    async with BackupLock(directory, settings.backup.lock_wait_seconds):
        path, manifest = await asyncio.to_thread(catalog.locate, directory, file)
        kind = names.kind_of(path.name)
        if kind == "postgres":
            return await _restore_postgres(settings, path, manifest, confirm)
        if kind == "json":
            return await _restore_json(settings, path, manifest, confirm)
    raise BackupError(f"{file}: not a backup clawd can restore (a .dump or _json.tar.gz file)")
