"""One backup run, start to end, under the backup lock:

stale partials removed -> JSON archive -> pg_dump (backend=postgres) -> manifest ->
verification -> rotation (only after success). Never raises for a failed backup: the
result says what went wrong, and a manifest records it for `clawd backup list`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import asyncpg
import structlog

from clawd.act.backup import archive, files, names, pgdump, rotation, scratch
from clawd.act.backup import manifest as manifests
from clawd.act.backup.errors import BackupError
from clawd.act.backup.lock import BackupLock
from clawd.act.backup.manifest import FileEntry, Kind, Manifest, Verification
from clawd.act.backup.pgtools import PgTools, connect, probe, time_limit
from clawd.act.backup.results import BackupResult, human_size
from clawd.act.backup.verify import drop_leftover_scratch, verify_set
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import utcnow

log = structlog.get_logger("clawd.act.backup")


@dataclass
class _Run:
    stamp: str
    created: datetime
    files: list[FileEntry] = field(default_factory=list)
    tools: PgTools | None = None
    dump: pgdump.DumpInfo | None = None
    json_members: list[str] = field(default_factory=list)


def _stamp_used(directory: Path, prefix: str) -> bool:
    return any(p.name.startswith(prefix) for p in directory.iterdir())


async def _free_stamp(directory: Path) -> tuple[str, datetime]:
    """A stamp no file in the directory has yet (waits for the next second if needed)."""
    while True:
        now = utcnow()
        stamp = names.stamp_of(now)
        used = await asyncio.to_thread(_stamp_used, directory, names.PREFIX + stamp)
        if not used:
            return stamp, now
        await asyncio.sleep(1.01 - time.time() % 1.0)


async def _write_file(
    directory: Path, name: str, kind: Kind, run: _Run, write: Callable[[int], Awaitable[None]]
) -> None:
    """Create `<name>.partial`, let `write(fd)` fill it, commit; record size and sha256."""
    final = directory / name
    partial, fd = await asyncio.to_thread(files.create_partial, final)
    pending: int | None = fd
    try:
        await write(fd)
        pending = None
        await asyncio.to_thread(files.commit, partial, final, fd)
        size, digest = await asyncio.to_thread(files.sha256_of, final)
    except BaseException:
        files.discard(partial, pending)  # synchronous: also runs when cancelled
        raise
    run.files.append(FileEntry(name, kind, size, digest))


async def _archive_json(settings: Settings, directory: Path, run: _Run) -> None:
    async def write(fd: int) -> None:
        try:
            run.json_members = await asyncio.to_thread(archive.write_archive, settings.home, fd)
        except OSError as exc:
            raise BackupError(f"cannot archive the JSON store: {exc}") from None

    await _write_file(directory, names.json_name(run.stamp), "json", run, write)


async def _dump_postgres(settings: Settings, directory: Path, run: _Run) -> None:
    pg, b = settings.postgres, settings.backup
    run.tools = tools = await probe(b.pg_bin_dir)
    conn = await connect(pg)
    try:

        async def write(fd: int) -> None:
            async with time_limit(b.timeout_seconds, "pg_dump"):
                run.dump = await pgdump.dump(conn, pg, tools, compress=b.compress, out_fd=fd)

        await _write_file(directory, names.dump_name(run.stamp), "postgres", run, write)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise BackupError(f"PostgreSQL at {pg.target()}: {exc}") from None
    finally:
        await conn.close()


def _manifest(
    settings: Settings, run: _Run, source: str, duration: float, error: str | None
) -> Manifest:
    dump = run.dump
    return Manifest(
        stamp=run.stamp,
        created_at=run.created.isoformat(),
        status="failed" if error else "ok",
        source=source,
        backend=settings.backend,
        duration_s=round(duration, 3),
        files=tuple(run.files),
        error=error,
        database=settings.postgres.target() if settings.backend == "postgres" else None,
        pg_dump_version=dump.pg_dump_version if dump else None,
        server_version=dump.server_version if dump else None,
        compression=dump.compression if dump else None,
        row_counts=dump.row_counts if dump else None,
        json_members=tuple(run.json_members),
    )


async def _rotate(settings: Settings, directory: Path) -> tuple[str, ...]:
    b = settings.backup
    try:
        found, _broken = await asyncio.to_thread(manifests.read_all, directory)
        doomed = rotation.plan(found, utcnow(), b.retention_days, b.keep_min)
        deleted = await asyncio.to_thread(rotation.apply, directory, doomed)
    except OSError as exc:
        log.error("backup_rotation_failed", reason=str(exc))
        return ()
    if deleted:
        log.info("backup_rotated", deleted=",".join(deleted))
    return tuple(deleted)


async def _verify(
    settings: Settings, directory: Path, manifest: Manifest, tools: PgTools | None
) -> Verification:
    b = settings.backup
    try:
        async with time_limit(b.timeout_seconds, "verification"):
            return await verify_set(
                directory,
                manifest,
                pg=settings.postgres,
                tools=tools,
                restore=b.verify_restore == "each",
                ledger=directory,
            )
    except BackupError as exc:
        return Verification(ok=False, at=utcnow().isoformat(), error=str(exc))


async def _locked_backup(settings: Settings, directory: Path, source: str) -> BackupResult:
    b = settings.backup
    removed = await asyncio.to_thread(files.remove_stale, directory)
    files.log_removed(removed, directory)
    await drop_leftover_scratch(settings, directory)
    stamp, created = await _free_stamp(directory)
    run = _Run(stamp, created)
    # Until the manifest is written, the marker says the run's files are not a backup.
    await asyncio.to_thread(scratch.mark_run, directory, stamp)
    started = time.monotonic()
    errors: list[str] = []
    # Each part on its own: a JSON store problem must not cost the database backup.
    parts = [_archive_json]
    if settings.backend == "postgres":
        parts.append(_dump_postgres)
    for part in parts:
        try:
            await part(settings, directory, run)
        except ClawdError as exc:
            errors.append(str(exc))
    error = "; ".join(errors) or None
    duration = time.monotonic() - started
    manifest = _manifest(settings, run, source, duration, error)
    await asyncio.to_thread(manifests.write, directory, manifest)
    await asyncio.to_thread(scratch.unmark_run, directory, stamp)
    done = partial(BackupResult, source=source, stamp=stamp, directory=str(directory))
    if error is not None:
        return done(ok=False, files=tuple(run.files), duration_s=duration, error=error)
    verification = None
    if b.verify:
        verification = await _verify(settings, directory, manifest, run.tools)
        await asyncio.to_thread(
            manifests.write, directory, manifest.with_verification(verification)
        )
        if not verification.ok:
            return done(
                ok=False,
                files=tuple(run.files),
                duration_s=duration,
                verification=verification,
                error=f"verification failed: {verification.error}",
            )
    rotated = await _rotate(settings, directory)
    return done(
        ok=True,
        files=tuple(run.files),
        duration_s=duration,
        verification=verification,
        rotated=rotated,
    )


def log_result(result: BackupResult) -> None:
    if result.ok:
        log.info(
            "backup_done",
            files=",".join(f.name for f in result.files),
            size=human_size(result.size),
            duration_s=round(result.duration_s, 2),
            verified=result.verification.level if result.verification else "not run",
            restore_check=result.verification.restore if result.verification else "not run",
            source=result.source,
        )
    else:
        log.error("backup_failed", reason=result.error, source=result.source, stamp=result.stamp)


async def run_backup(settings: Settings, source: str) -> BackupResult:
    """Take one backup now (waiting for the lock); the result, logged."""
    directory = names.backup_dir(settings.home)
    try:
        async with BackupLock(directory, settings.backup.lock_wait_seconds):
            result = await _locked_backup(settings, directory, source)
    except ClawdError as exc:
        result = BackupResult(ok=False, source=source, directory=str(directory), error=str(exc))
    except OSError as exc:
        result = BackupResult(
            ok=False, source=source, directory=str(directory), error=f"{directory}: {exc}"
        )
    except Exception as exc:  # a bug in a backup must not stop the monitoring
        log.exception("backup_internal_error")
        result = BackupResult(
            ok=False,
            source=source,
            directory=str(directory),
            error=f"internal error: {type(exc).__name__}: {exc}",
        )
    log_result(result)
    return result
