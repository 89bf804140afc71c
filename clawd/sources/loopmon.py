"""Event-loop lag: how late a short sleep wakes up. A stalled loop stalls every ping."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clawd.config.settings import Settings

SAMPLE_SECONDS = 0.1
KEEP = 3000  # five minutes of samples


class LoopMonitor:
    name = "loop-monitor"

    def __init__(self) -> None:
        self._lags: deque[float] = deque(maxlen=KEEP)
        self._slept_at: float | None = None
        self._stopping = False

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        while not self._stopping:
            self._slept_at = before = time.monotonic()
            await asyncio.sleep(SAMPLE_SECONDS)
            self._lags.append(max(0.0, time.monotonic() - before - SAMPLE_SECONDS))

    def stop(self) -> None:
        """Sampling ends at the next wake-up (the daemon cancels it last, in any case)."""
        self._stopping = True

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """No setting changes the sampling."""

    def current_stall(self) -> float:
        """How late the monitor's wake-up is right now, or was at its last sample.

        Read by the fleet keeper before it judges pings: right after the loop resumes from
        a stall the monitor may not have run yet, but its overdue wake-up already shows it.
        """
        if self._slept_at is None:
            return 0.0
        overdue = time.monotonic() - self._slept_at - SAMPLE_SECONDS
        return max(overdue, self._lags[-1] if self._lags else 0.0, 0.0)

    def percentiles_ms(self) -> dict[str, float]:
        """p50/p99/max lag in ms over the recent samples (zeros before the first one)."""
        if not self._lags:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        ordered = sorted(self._lags)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

        return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1] * 1000, 2)}
