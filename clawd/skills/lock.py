"""`flock` on `<home>/.skills.lock`: one skills sync at a time across processes
(the daemon and `clawd skills sync`)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from clawd.errors import SkillSyncError

LOCK_NAME = ".skills.lock"
POLL_SECONDS = 0.1


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SkillsLock:
    """Async context manager; waits (polling, never blocking the loop) up to `wait_seconds`."""

    def __init__(self, home: Path, wait_seconds: float) -> None:
        self.path = home / LOCK_NAME
        self.wait_seconds = wait_seconds
        self._fd: int | None = None

    async def __aenter__(self) -> SkillsLock:
        try:
            fd = await asyncio.to_thread(_open, self.path)
        except OSError as exc:
            raise SkillSyncError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            deadline = time.monotonic() + self.wait_seconds
            while not await asyncio.to_thread(_try_flock, fd):
                if time.monotonic() >= deadline:
                    raise SkillSyncError(
                        f"another skills sync holds {self.path}; "
                        f"gave up after waiting {self.wait_seconds:g} s"
                    )
                await asyncio.sleep(POLL_SECONDS)
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
