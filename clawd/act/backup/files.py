"""Crash-safe backup files: `*.partial` (0600) -> fsync -> rename -> directory fsync.

A file with a final name is always complete; a crash leaves a `*.partial`, and maybe
finished files of a run that has no manifest (its `.running` marker says so): both are
removed (under the backup lock) at the next start and before the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import structlog

from clawd.act.backup import names
from clawd.core.atomic import fsync_dir, remove_stale_temp_files

log = structlog.get_logger("clawd.act.backup")

CHUNK = 1 << 20


def create_partial(final: Path) -> tuple[Path, int]:
    """Open `<final>.partial` for writing, mode 0600 from the first byte (blocking)."""
    partial = final.with_name(names.partial_name(final.name))
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return partial, fd


def commit(partial: Path, final: Path, fd: int) -> None:
    """fsync and close `fd`, rename the partial to its final name, fsync the directory."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    partial.replace(final)
    fsync_dir(final.parent)


def discard(partial: Path, fd: int | None) -> None:
    """Close and delete a partial after a failure (blocking, never raises)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    partial.unlink(missing_ok=True)


def sha256_of(path: Path) -> tuple[int, str]:
    """(size, hex digest), reading in 1 MiB chunks (blocking)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _interrupted_run(directory: Path, marker: Path, stamp: str) -> list[tuple[str, str]]:
    """A run killed before its manifest: its finished files are not a backup; remove them."""
    removed: list[tuple[str, str]] = []
    if not (directory / names.manifest_name(stamp)).exists():
        for entry in sorted(directory.iterdir()):
            own = names.parse_own(entry.name)
            if own is not None and own[0] == stamp and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append((entry.name, "written by a backup that was interrupted"))
    marker.unlink(missing_ok=True)
    return removed


def remove_stale(directory: Path) -> list[tuple[str, str]]:
    """Delete what a crashed run left (call only under the lock): temp files, partials, and
    the files of a run that never wrote its manifest. (name, why) of each, blocking."""
    removed = [(p.name, "temporary file") for p in remove_stale_temp_files(directory)]
    if not directory.is_dir():
        return removed
    for entry in sorted(directory.iterdir()):
        if names.PARTIAL_FILE.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append((entry.name, "partial file of an interrupted backup"))
        elif match := names.RUN_MARKER.match(entry.name):
            removed.extend(_interrupted_run(directory, entry, match.group(1)))
    if removed:
        fsync_dir(directory)
    return removed


def log_removed(removed: list[tuple[str, str]], directory: Path) -> None:
    """One warning line per file removed."""
    for name, why in removed:
        log.warning("backup_stale_file_removed", file=str(directory / name), why=why)
