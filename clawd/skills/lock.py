"""`flock` on `<home>/.skills.lock`: one skills sync at a time across processes
(the daemon and `clawd skills sync`)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import TracebackType

from clawd.errors import SkillSyncError
from clawd.filelock import open_lock_file, wait_for_flock

LOCK_NAME = ".skills.lock"
POLL_SECONDS = 0.1


class SkillsLock:
    """Async context manager; waits (polling, never blocking the loop) up to `wait_seconds`."""

    def __init__(self, home: Path, wait_seconds: float) -> None:
        self.path = home / LOCK_NAME
        self.wait_seconds = wait_seconds
        self._fd: int | None = None

    async def __aenter__(self) -> SkillsLock:
        try:
            fd = await asyncio.to_thread(open_lock_file, self.path)
        except OSError as exc:
            raise SkillSyncError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            if not await wait_for_flock(fd, self.wait_seconds, POLL_SECONDS):
                raise SkillSyncError(
                    f"another skills sync holds {self.path}; "
                    f"gave up after waiting {self.wait_seconds:g} s"
                )
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
