"""`flock` on `<home>/backups/.clawd-backup.lock`: one backup/verify/restore at a time,
across processes (two daemons, a cron job running `clawd backup now`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import structlog

from clawd.backup.errors import BackupError
from clawd.backup.names import LOCK_NAME
from clawd.filelock import open_lock_file, try_flock, wait_for_flock

log = structlog.get_logger("clawd.backup")

POLL_SECONDS = 0.2


def prepare_dir(directory: Path) -> None:
    """Create the backup directory, mode 0700 (blocking)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 64, 0).decode().strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


def _stamp_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


class BackupLock:
    """Async context manager; the lock file itself is never deleted (that would race)."""

    def __init__(self, directory: Path, wait_seconds: float) -> None:
        self.path = directory / LOCK_NAME
        self.wait_seconds = wait_seconds
        self._fd: int | None = None

    def _log_wait(self) -> None:
        log.info("backup_waiting_for_lock", lock=str(self.path))

    async def __aenter__(self) -> BackupLock:
        fd = await asyncio.to_thread(open_lock_file, self.path)
        try:
            if not await wait_for_flock(fd, self.wait_seconds, POLL_SECONDS, self._log_wait):
                holder = await asyncio.to_thread(_holder, fd)
                raise BackupError(
                    f"another backup, verify or restore is running in {self.path.parent}"
                    f"{holder}; gave up after waiting {self.wait_seconds:g} s"
                )
            await asyncio.to_thread(_stamp_pid, fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock


def try_locked(directory: Path, work: Callable[[], object]) -> bool:
    """Run `work()` under the lock if it is free right now (blocking); False if held."""
    fd = open_lock_file(directory / LOCK_NAME)
    try:
        if not try_flock(fd):
            return False
        work()
        return True
    finally:
        os.close(fd)
