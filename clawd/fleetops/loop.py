"""The loop both kinds of leader work share: wake on news, on a due retry, or now and then."""

from __future__ import annotations

import asyncio
import time

import structlog

from clawd.errors import ClawdError
from clawd.fleetops.retry import REPEAT_SECONDS, PeerBackoff
from clawd.fleetview import FleetView
from clawd.ratelog import LogLimiter
from clawd.settings import Settings

log = structlog.get_logger("clawd.fleetops")

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
        self._wake = asyncio.Event()
        self._stopping = False
        # Cycles fail again at every wake while the cause lasts: one line per cause.
        self._failures = LogLimiter(REPEAT_SECONDS)

    def update_view(self, view: FleetView) -> None:
        self._view = view
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        while not self._stopping:
            await self._sleep()
            if self._stopping:
                return
            try:
                await self._cycle()
            except ClawdError as exc:
                if self._failures.fresh(str(exc), time.monotonic()):
                    log.error(self.failed_event, error=str(exc))

    async def _sleep(self) -> None:
        due = self._backoff.next_due()
        seconds = IDLE_SECONDS if due is None else max(0.05, due - time.monotonic())
        try:
            async with asyncio.timeout(min(seconds, IDLE_SECONDS)):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    async def _cycle(self) -> None:
        raise NotImplementedError
