"""Crash-safe backup files: `*.partial` (0600) -> fsync -> rename -> directory fsync.

A file with a final name is always complete; a crash leaves only a `*.partial`,
removed (under the backup lock) before the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from clawd.backup import names
from clawd.store.atomic import remove_stale_temp_files

CHUNK = 1 << 20


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def remove_stale(directory: Path) -> list[str]:
    """Delete partials and temp files a crashed run left (call only under the lock)."""
    removed = [p.name for p in remove_stale_temp_files(directory)]
    if directory.is_dir():
        for entry in directory.iterdir():
            if names.PARTIAL_FILE.match(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
    return removed
