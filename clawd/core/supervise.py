"""One owner for a component's one job at a time: a child task that `cancel()` can end."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class JobSlot:
    """Runs one job at a time as a named child task, so that `stop()` can cancel it.

    The caller awaits `run()`; `cancel()` (from `stop()`, another task) ends the job and
    `run()` returns None. If the caller itself is cancelled, the job is cancelled and
    awaited first: it never outlives its owner. A job's own exception is raised by `run()`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._job: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """The job's result; None when `cancel()` ended it."""
        job = asyncio.create_task(coro, name=self.name)
        self._job = job
        try:
            await asyncio.wait({job})
            return None if job.cancelled() else job.result()
        finally:
            if not job.done():  # the caller itself was cancelled
                job.cancel()
                await asyncio.wait({job})
            self._job = None
