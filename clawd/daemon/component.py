"""The one shape every long-lived part of the daemon has: run until stopped, take new settings.

The daemon holds its components in one ordered list: it starts them in that order and waits
for each to say it is up, reconfigures them in that order on a reload, and stops them in
the reverse order. A component that has nothing to do with a reload ignores it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from clawd.config.settings import Settings


class Component(Protocol):
    name: str  # names its task and the log lines about it ("pinger", "fleet", …)

    async def run(self, ready: asyncio.Event) -> None:
        """Do the work; set `ready` once up; return soon after stop()."""

    def stop(self) -> None:
        """Ask run() to return (idempotent; only sets a flag or wakes run)."""

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """New settings are in force; `changed` holds the changed dotted keys and their
        top-level sections ("ping.intervalSeconds" and "ping")."""


def changed_set(keys: Iterable[str]) -> frozenset[str]:
    """Changed dotted keys plus the top-level sections they are in."""
    keys = tuple(keys)
    return frozenset(keys) | {key.split(".")[0] for key in keys}
