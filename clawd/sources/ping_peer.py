"""One pinged peer: its target, its schedule and connection state, and its backoff."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from clawd.core.observations import PeerProof
from clawd.sources.ping_schedule import rng, wake
from clawd.sources.ssh_client import Attempt
from clawd.sources.ssh_link import Link

# Rounds between identity reads once proven: never more often than the install check.
PROVEN = 2**31
BACKOFF_SPREAD = 0.2  # reconnect delays are cut by up to this fraction, so peers spread out


@dataclass(frozen=True)
class PingTarget:
    """One peer to ping."""

    gateway_id: str
    host: str
    port: int
    user: str


class PeerState:
    """A target's schedule and connection state; changed only on the event loop."""

    def __init__(self, target: PingTarget, retry_delay: float) -> None:
        self.target = target
        self.task: asyncio.Task[None] | None = None  # the round loop
        self.keeper: asyncio.Task[None] | None = None  # (re)connecting, while it does
        self.link: Link | None = None
        self.attempt: Attempt | None = None
        self.attempt_done: asyncio.Future[None] | None = None
        self.sleeper: asyncio.Future[None] | None = None
        self.stopping = False
        self.reschedule = False
        self.proven = False  # an echo came back since connecting: reconnect at once if lost
        self.last_error: str | None = None
        self.tcp_reachable: bool | None = None
        self.retry_at = 0.0
        self.retry_delay = retry_delay
        self.check_due = True
        self.rounds_since_check = 0
        self.unproven_every = 1  # rounds between identity reads until proven (doubles)

    def identity_read(self, proof: PeerProof | None) -> bool:
        """Note a read of the peer's identity; True if it proved the gateway id."""
        if proof is not None and proof.proves(self.target.gateway_id):
            self.unproven_every = PROVEN
            return True
        if proof is not None:  # asked again after 2, 4, 8 … rounds (it may be starting)
            self.unproven_every = min(self.unproven_every * 2, PROVEN)
        return False

    def wake(self) -> None:
        if self.sleeper is not None:
            wake(self.sleeper)

    async def sleep_until(self, when: float) -> None:
        """asyncio.sleep, but stop() and a new interval can wake it early."""
        loop = asyncio.get_running_loop()
        self.sleeper = sleeper = loop.create_future()
        handle = loop.call_at(when, wake, sleeper)
        try:
            await sleeper
        finally:
            handle.cancel()
            self.sleeper = None

    def back_off(self, now: float, max_seconds: float, *, spread: bool) -> float:
        """Set the next connection attempt's time; the delay (before any spread) is returned
        and doubles, up to `max_seconds`, for the attempt after."""
        delay = min(self.retry_delay, max_seconds)
        factor = rng.uniform(1.0 - BACKOFF_SPREAD, 1.0) if spread else 1.0
        self.retry_at = now + delay * factor
        self.retry_delay = min(delay * 2.0, max_seconds)
        return delay


def stalled_attempt(attempt: Attempt, seconds: float) -> tuple[str, bool | None]:
    """Why a connection attempt under way has not delivered a link after `seconds`, and
    whether the peer's TCP port answered."""
    if attempt.stage == "queued":
        return "waiting for a handshake slot", None
    if attempt.stage == "tcp":
        return f"no TCP answer within {seconds:g}s", False
    return f"SSH handshake unfinished after {seconds:g}s", True
