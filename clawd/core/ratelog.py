"""One log line per condition per interval: a flood of bad clients must not flood the journal."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog

# Long enough that a flood costs a handful of lines, short enough that a fix shows soon.
LOG_INTERVAL = 60.0
MAX_REMEMBERED = 1024  # problems kept in mind; the oldest is forgotten first


class LogLimiter:
    """Whether a problem deserves a log line: the first time, then once per `interval`."""

    def __init__(self, interval: float, remembered: int = MAX_REMEMBERED) -> None:
        self.interval = interval
        self.remembered = remembered
        self._last: dict[Hashable, float] = {}  # problem -> when it was last logged

    def fresh(self, problem: Hashable, now: float) -> bool:
        """True (and remembered as logged now) unless `problem` was logged < interval ago."""
        last = self._last.get(problem)
        if last is not None and now - last < self.interval:
            return False
        self._last.pop(problem, None)
        self._last[problem] = now  # re-inserted: the dict stays oldest-first
        while len(self._last) > self.remembered:
            del self._last[next(iter(self._last))]
        return True


class RateLimitedLog:
    """Logs an event at most once per `interval`; the next line says how many were held back."""

    def __init__(
        self,
        logger: structlog.typing.FilteringBoundLogger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._limiter = LogLimiter(interval)
        self._clock = clock
        self._held: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(self._log.warning, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(self._log.error, event, fields)

    def _emit(self, method: Callable[..., Any], event: str, fields: dict[str, Any]) -> None:
        if not self._limiter.fresh(event, self._clock()):
            self._held[event] = self._held.get(event, 0) + 1
            return
        if held := self._held.pop(event, 0):
            fields = {**fields, "suppressed": held}
        method(event, **fields)
