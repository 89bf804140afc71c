"""`flock` on `<home>/backups/.clawd-backup.lock`: one backup/verify/restore at a time,
across processes (two daemons, a cron job running `clawd backup now`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog

from clawd.act.backup.errors import BackupError
from clawd.act.backup.names import LOCK_NAME
from clawd.core.filelock import Flock, holder_pid, open_lock_file, try_flock

log = structlog.get_logger("clawd.act.backup")

POLL_SECONDS = 0.2


def prepare_dir(directory: Path) -> None:
    """Create the backup directory, mode 0700 (blocking)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


class BackupLock(Flock):
    """Async context manager; the lock file itself is never deleted (that would race)."""

    poll_seconds = POLL_SECONDS
    stamp_pid = True

    def __init__(self, directory: Path, wait_seconds: float) -> None:
        super().__init__(directory / LOCK_NAME, wait_seconds)

    def _first_wait(self) -> None:
        log.info("backup_waiting_for_lock", lock=str(self.path))

    def _busy(self, fd: int) -> Exception:
        return BackupError(
            f"another backup, verify or restore is running in {self.path.parent}"
            f"{holder_pid(fd)}; gave up after waiting {self.wait_seconds:g} s"
        )


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
