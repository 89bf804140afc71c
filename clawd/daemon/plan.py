"""The daemon's ordered list of components, and how each one is stopped."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from clawd.daemon.component import Component


class Stop(enum.Enum):
    """How shutdown (the list in reverse) treats a component."""

    # Stopped together with the sources next to it in the list; the late ones are
    # cancelled after STOP_SOURCES_SECONDS.
    SOURCE = "source"
    # Stopped, then waited for: it finishes the work in hand (the keeper drains its
    # queue, the repository flushes and closes its sink).
    DRAIN = "drain"
    # Cancelled once everything else has ended (the watchdog and the loop monitor).
    LAST = "last"


@dataclass(frozen=True, slots=True)
class Entry:
    component: Component
    stop: Stop
