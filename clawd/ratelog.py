"""One log line per condition per interval: a flood of bad clients must not flood the journal."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

# Long enough that a flood costs a handful of lines, short enough that a fix shows soon.
LOG_INTERVAL = 60.0


class RateLimitedLog:
    """Logs an event at most once per `interval`; the next line says how many were held back."""

    def __init__(
        self,
        logger: structlog.typing.FilteringBoundLogger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(self._log.warning, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(self._log.error, event, fields)

    def _emit(self, method: Callable[..., Any], event: str, fields: dict[str, Any]) -> None:
        now = self._clock()
        last = self._last.get(event)
        if last is not None and now - last < self.interval:
            self._held[event] = self._held.get(event, 0) + 1
            return
        self._last[event] = now
        if held := self._held.pop(event, 0):
            fields = {**fields, "suppressed": held}
        method(event, **fields)
