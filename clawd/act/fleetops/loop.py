"""The loop both kinds of leader work share: wake on news, on a due retry, or now and then."""

from __future__ import annotations

import asyncio
import time

import structlog

from clawd.act.fleetops.retry import REPEAT_SECONDS, PeerBackoff
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.periodic import Periodic
from clawd.core.ratelog import LogLimiter
from clawd.decide.view import FleetView

log = structlog.get_logger("clawd.act.fleetops")

IDLE_SECONDS = 30.0


def new_backoff(settings: Settings) -> PeerBackoff:
    r = settings.recovery
    return PeerBackoff(r.retry_initial_seconds, r.retry_max_seconds)


class LeaderLoop:
    """Runs `_cycle()` after a new fleet view, when a peer's retry is due, or every 30 s."""

    # The log event when a cycle fails for a reason a person can fix.
    failed_event = "leader_work_failed"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._view: FleetView | None = None
        self._backoff = new_backoff(settings)
        # Cycles fail again at every wake while the cause lasts: one line per cause.
        self._failures = LogLimiter(REPEAT_SECONDS)
        self._ticker = Periodic(
            self._cycle, self._idle_seconds, catch=(ClawdError,), on_error=self._failed
        )

    def update_view(self, view: FleetView) -> None:
        self._view = view
        self._ticker.wake()

    def stop(self) -> None:
        self._ticker.stop()

    async def run(self, ready: asyncio.Event) -> None:
        await self._ticker.run(ready)

    def _idle_seconds(self) -> float:
        """Until the first peer's retry is due (at least 50 ms), at most IDLE_SECONDS."""
        due = self._backoff.next_due()
        seconds = IDLE_SECONDS if due is None else max(0.05, due - time.monotonic())
        return min(seconds, IDLE_SECONDS)

    def _failed(self, exc: Exception) -> None:
        if self._failures.fresh(str(exc), time.monotonic()):
            log.error(self.failed_event, error=str(exc))

    async def _cycle(self) -> None:
        raise NotImplementedError
