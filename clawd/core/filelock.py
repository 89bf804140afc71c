"""Polled `flock` for async code: one holder at a time across processes, loop never blocked.

The lock file itself is never deleted (deleting it would let a second holder in).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self


def open_lock_file(path: Path) -> int:
    """The lock file's descriptor (0600; its folder made 0700 if missing); blocking."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def try_flock(fd: int) -> bool:
    """Take the exclusive lock if it is free right now (never waits)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def wait_for_flock(
    fd: int,
    wait_seconds: float,
    poll_seconds: float,
    on_first_wait: Callable[[], None] | None = None,
) -> bool:
    """Poll until the lock is ours (True) or `wait_seconds` passed (False)."""
    deadline = time.monotonic() + wait_seconds
    waited = False
    while not try_flock(fd):
        if time.monotonic() >= deadline:
            return False
        if not waited and on_first_wait is not None:
            on_first_wait()
        waited = True
        await asyncio.sleep(poll_seconds)
    return True


def holder_pid(fd: int) -> str:
    """` (pid N)` when the lock file names its holder (see `Flock.stamp_pid`), else ""."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 64, 0).decode().strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


def _stamp_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


class Flock:
    """Async context manager holding the flock on `path`, polling up to `wait_seconds`.

    Closing the only descriptor releases the lock. Subclasses say what a failure means to
    their callers (`_busy`, `_cannot_open`, `_first_wait`).
    """

    poll_seconds = 0.1
    # Write our pid into the lock file once it is ours, for a waiter's error message.
    stamp_pid = False

    def __init__(self, path: Path, wait_seconds: float) -> None:
        self.path = path
        self.wait_seconds = wait_seconds
        self._fd: int | None = None

    def _busy(self, fd: int) -> Exception:
        """The error raised when the lock stayed held for `wait_seconds` (blocking)."""
        return TimeoutError(f"{self.path} is held; gave up after {self.wait_seconds:g} s")

    def _cannot_open(self, exc: OSError) -> Exception:
        """The error raised when the lock file cannot be opened (default: the OSError)."""
        return exc

    def _first_wait(self) -> None:
        """Called once when the lock is held by another at the first try."""

    async def __aenter__(self) -> Self:
        try:
            fd = await asyncio.to_thread(open_lock_file, self.path)
        except OSError as exc:
            error = self._cannot_open(exc)
            if error is exc:
                raise
            raise error from None
        try:
            if not await wait_for_flock(fd, self.wait_seconds, self.poll_seconds, self._first_wait):
                raise await asyncio.to_thread(self._busy, fd)
            if self.stamp_pid:
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
