"""Flapping, the way Nagios measures it: percent state change over the last 21 results.

Each of the 20 possible changes between consecutive results is weighted from 0.8 (oldest)
to 1.2 (newest), so recent changes count more; the weighted changes are a percentage of 20.
A peer starts flapping above the high threshold and stops below the low one: the gap
between the two (hysteresis) keeps the flag itself from flapping.
"""

from __future__ import annotations

RESULTS_KEPT = 21
OLDEST_WEIGHT = 0.8
NEWEST_WEIGHT = 1.2


def remember(results: tuple[bool, ...], ok: bool) -> tuple[bool, ...]:
    """The last 21 results, oldest first, after this one."""
    return (*results[-(RESULTS_KEPT - 1) :], ok)


def percent_state_change(results: tuple[bool, ...]) -> float:
    """0.0 (steady) .. 100.0 (every result differs from the one before)."""
    possible = RESULTS_KEPT - 1
    changes = len(results) - 1
    total = 0.0
    for i in range(max(0, changes)):
        if results[i] != results[i + 1]:
            # Aligned to the newest change, so a short history weighs like the window's end.
            position = possible - changes + i
            total += OLDEST_WEIGHT + (NEWEST_WEIGHT - OLDEST_WEIGHT) * position / (possible - 1)
    # Always out of 20, as Nagios does: a new peer's first changes cannot make it flap.
    return min(100.0, 100.0 * total / possible)


def flapping_now(was_flapping: bool, percent: float, high: float, low: float) -> bool:
    if was_flapping:
        return percent >= low
    return percent > high
