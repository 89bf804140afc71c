"""`flock` on `<home>/.skills.lock`: one skills sync at a time across processes
(the daemon and `clawd skills sync`)."""

from __future__ import annotations

from pathlib import Path

from clawd.core.errors import SkillSyncError
from clawd.core.filelock import Flock

LOCK_NAME = ".skills.lock"
POLL_SECONDS = 0.1


class SkillsLock(Flock):
    """Async context manager; waits (polling, never blocking the loop) up to `wait_seconds`."""

    poll_seconds = POLL_SECONDS

    def __init__(self, home: Path, wait_seconds: float) -> None:
        super().__init__(home / LOCK_NAME, wait_seconds)

    def _cannot_open(self, exc: OSError) -> Exception:
        return SkillSyncError(f"cannot open {self.path}: {exc.strerror or exc}")

    def _busy(self, fd: int) -> Exception:
        return SkillSyncError(
            f"another skills sync holds {self.path}; gave up after waiting {self.wait_seconds:g} s"
        )
