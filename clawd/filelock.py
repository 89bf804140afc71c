"""Polled `flock` for async code: one holder at a time across processes, loop never blocked.

The lock file itself is never deleted (deleting it would let a second holder in).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path


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
