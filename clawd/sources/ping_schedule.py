"""When a peer's next ping round starts: a jittered interval on a shared grid of ticks."""

from __future__ import annotations

import asyncio
import random

from clawd.config.sections import PingSettings

# Rounds start on a shared grid of ticks (interval/20, at most 100 ms) so that peers due
# within one tick share one event-loop wake-up: on these VMs the wake-ups, not the
# SSH packets, are most of a ping's CPU (see bench/ssh_ping_cost.py).
TICK_FRACTION = 0.05
TICK_MAX_SECONDS = 0.1

rng = random.Random()  # noqa: S311 -- schedule jitter, nothing secret


def wake(waiter: asyncio.Future[None]) -> None:
    """End a sleep early (or on time); a waiter already woken stays as it is."""
    if not waiter.done():
        waiter.set_result(None)


def on_tick(when: float, interval_seconds: float) -> float:
    """`when` moved to the nearest tick of the shared grid."""
    tick = min(TICK_MAX_SECONDS, interval_seconds * TICK_FRACTION)
    return round(when / tick) * tick


def phase(interval_seconds: float) -> float:
    """A random offset into the interval, so that rounds of all peers spread over it."""
    return rng.uniform(0.0, interval_seconds)


def jittered_interval(ping: PingSettings) -> float:
    """The time from one round to the next: the interval, give or take its jitter."""
    jitter = ping.jitter_fraction
    return ping.interval_seconds * (1.0 + rng.uniform(-jitter, jitter))
