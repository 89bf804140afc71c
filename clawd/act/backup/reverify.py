"""Verify an existing backup on demand (`clawd backup verify [FILE]`, the verify_restore
schedule) and record the result in its manifest."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog

from clawd.act.backup import catalog, names
from clawd.act.backup import manifest as manifests
from clawd.act.backup.errors import BackupError
from clawd.act.backup.lock import BackupLock
from clawd.act.backup.manifest import Manifest, Verification
from clawd.act.backup.pgtools import PgTools, probe, time_limit
from clawd.act.backup.results import VerifyResult
from clawd.act.backup.verify import (
    drop_leftover_scratch,
    read_archive,
    read_dump,
    restore_scratch,
    verify_set,
)
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import utcnow

log = structlog.get_logger("clawd.act.backup")


async def _tools(settings: Settings, needed: bool) -> tuple[PgTools | None, str | None]:
    if not needed:
        return None, None
    try:
        return await probe(settings.backup.pg_bin_dir), None
    except ClawdError as exc:
        return None, str(exc)


async def _verify_unlisted(
    settings: Settings, path: Path, tools: PgTools | None, restore: bool
) -> Verification:
    """A file without a manifest (copied from elsewhere): no checksum to compare."""
    started = time.monotonic()
    restored = "n/a"
    if names.kind_of(path.name) == "json":
        readable = await read_archive(path)
    elif tools is None:
        readable = "failed: pg_restore not available"
    else:
        readable = await read_dump(tools, path)
        restored = "not run"
        if restore and readable == "ok":
            restored, _ = await restore_scratch(
                settings.postgres, tools, path, None, ledger=names.backup_dir(settings.home)
            )
    problems = [r for r in (readable, restored) if r.startswith("failed")]
    return Verification(
        ok=not problems,
        at=utcnow().isoformat(),
        checksum="no manifest",
        readable=readable,
        restore=restored,
        duration_s=round(time.monotonic() - started, 3),
        error=problems[0].removeprefix("failed: ") if problems else None,
    )


async def _locked_verify(
    settings: Settings, directory: Path, file: str | None, restore: bool
) -> VerifyResult:
    await drop_leftover_scratch(settings, directory)
    manifest: Manifest | None
    if file is None:
        manifest = await asyncio.to_thread(catalog.newest_good, directory)
        if manifest is None:
            raise BackupError(f"no complete backup to verify in {directory}")
        where = directory
    else:
        path, manifest = await asyncio.to_thread(catalog.locate, directory, file)
        where = path.parent
    if manifest is None:
        tools, problem = await _tools(settings, names.kind_of(path.name) == "postgres")
        verification = await _verify_unlisted(settings, path, tools, restore)
        if problem and tools is None and names.kind_of(path.name) == "postgres":
            verification = _with_error(verification, problem)
        return VerifyResult(None, (path.name,), verification, recorded=False)
    tools, problem = await _tools(settings, manifest.file("postgres") is not None)
    verification = await verify_set(
        where,
        manifest,
        pg=settings.postgres,
        tools=tools,
        restore=restore,
        ledger=directory,
    )
    if problem and tools is None:
        verification = _with_error(verification, problem)
    await asyncio.to_thread(manifests.write, where, manifest.with_verification(verification))
    return VerifyResult(
        manifest.stamp, tuple(f.name for f in manifest.files), verification, recorded=True
    )


def _with_error(v: Verification, problem: str) -> Verification:
    return Verification(
        ok=False,
        at=v.at,
        checksum=v.checksum,
        readable=f"failed: {problem}",
        restore=v.restore,
        restored_counts=v.restored_counts,
        duration_s=v.duration_s,
        error=problem,
    )


async def run_verify(
    settings: Settings, file: str | None, *, restore: bool | None = None
) -> VerifyResult:
    """Verify FILE's run (default: the newest complete run); restore defaults to
    `backup.verifyRestore != "off"`. BackupError when there is nothing to verify."""
    directory = names.backup_dir(settings.home)
    do_restore = settings.backup.verify_restore != "off" if restore is None else restore
    async with (
        BackupLock(directory, settings.backup.lock_wait_seconds),
        time_limit(settings.backup.timeout_seconds, "verification"),
    ):
        result = await _locked_verify(settings, directory, file, do_restore)
    v = result.verification
    if v.ok:
        log.info(
            "backup_verified",
            files=",".join(result.files),
            checksum=v.checksum,
            readable=v.readable,
            restore_check=v.restore,
        )
    else:
        log.error("backup_verify_failed", files=",".join(result.files), reason=v.error)
    return result
