"""One periodic runner: a step every N seconds, woken early on news, stopped mid-wait.

Every component that works now and then (the hourly rollup, pruning, backups, skills,
the leader's fleet work, the config watcher) runs on this one loop, so that `stop()`,
`wake()` and a failing step mean the same thing in each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

# A step may say how long to wait before it runs again (None: the runner's interval).
Step = Callable[[], Awaitable[float | None]]
ErrorHandler = Callable[[Exception], None]


class Periodic:
    """Runs `step` every `interval` seconds until `stop()`; `wake()` runs it at once.

    `interval` is a number or a callable read again before every wait, so live settings
    apply from the next wait on (call `wake()` to apply them to the current one). The first
    wait is `first_delay` when given, else the interval. A wait ends early on `wake()` or
    `stop()`; a running step is never interrupted (a long one may look at `stopping`).
    An exception of a type in `catch` is passed to `on_error` and the loop goes on at the
    next interval; any other exception ends `run()`.
    """

    def __init__(
        self,
        step: Step,
        interval: float | Callable[[], float],
        *,
        first_delay: float | None = None,
        catch: tuple[type[Exception], ...] = (),
        on_error: ErrorHandler | None = None,
    ) -> None:
        if catch and on_error is None:
            raise ValueError("caught exceptions need an on_error handler")
        self._step = step
        self._interval = interval
        self._first_delay = first_delay
        self._catch = catch
        self._on_error = on_error
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wake(self) -> None:
        """End the current wait: the step runs now (or, during a step, right after it)."""
        self._wake.set()

    def stop(self) -> None:
        """Ask `run()` to return: at once when waiting, else after the current step."""
        self._stopping = True
        self._wake.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        if ready is not None:
            ready.set()
        delay = self._next_interval() if self._first_delay is None else self._first_delay
        while not self._stopping:
            await self._wait(delay)
            if self._stopping:
                return
            asked = await self._run_step()
            delay = self._next_interval() if asked is None else asked

    def _next_interval(self) -> float:
        return self._interval() if callable(self._interval) else self._interval

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()
        # Cleared only now: news that arrives during the step runs it once more.
        self._wake.clear()

    async def _run_step(self) -> float | None:
        try:
            return await self._step()
        except self._catch as exc:
            assert self._on_error is not None  # checked in __init__
            self._on_error(exc)
            return None
