"""Asks peers whose SSH fails whether their mDNS announcer still answers (see
clawd/decide/mdns_fresh.py for why a cached record is not enough).

The reconciler asks after each failed ping (an `MdnsQuery`); this sends one query for the
peer's own instance names (clawd/sources/mdns_query.py) and reports an `MdnsFresh`. At
most one query per peer is in flight, and one per ping round: a second ask within
`interval x (1 - jitter)` of the last is dropped, so the traffic is bounded by the number
of peers failing SSH, never by how often anyone asks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog
from zeroconf import Zeroconf

from clawd.config.sections import DiscoverySettings, PingSettings
from clawd.config.settings import Settings
from clawd.core.model import utcnow
from clawd.core.observations import MDNS_QUERY_WAIT_SECONDS, MdnsFresh, MdnsQuery, Observation
from clawd.core.ratelog import LogLimiter
from clawd.sources.mdns_query import instance_answers

log = structlog.get_logger("clawd.sources.mdns_ask")

ROUND_SLACK = 0.9  # rounds land on a tick grid: a round may come a little early
FAILURE_LOG_SECONDS = 600.0  # the same send failure is logged at most this often


class Announcements(Protocol):
    """What Discovery knows: who announces a gateway id, and its running zeroconf."""

    def service_names(self, gateway_id: str) -> tuple[str, ...]: ...

    def zeroconf(self) -> Zeroconf | None: ...


class MdnsAsker:
    """Component: `ask()` from the keeper; answers go to `emit` as `MdnsFresh`."""

    name = "mdns-ask"

    def __init__(
        self,
        ping: PingSettings,
        discovery: DiscoverySettings,
        announcements: Announcements,
        emit: Callable[[Observation], None],
    ) -> None:
        self._announcements = announcements
        self._emit = emit
        self._configure(ping, discovery)
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        # Peers asked this round: the task holds its place until the round is over.
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._failures = LogLimiter(FAILURE_LOG_SECONDS)
        self.queries = 0  # queries sent (for tests and benchmarks)

    def _configure(self, ping: PingSettings, discovery: DiscoverySettings) -> None:
        self._wait = min(MDNS_QUERY_WAIT_SECONDS, ping.interval_seconds / 2)
        self._round = ping.interval_seconds * (1 - ping.jitter_fraction) * ROUND_SLACK
        self._interfaces = discovery.interfaces

    async def run(self, ready: asyncio.Event) -> None:
        if self._tg is not None:
            raise RuntimeError("MdnsAsker.run() is already running")
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            ready.set()
            try:
                await self._stop.wait()
            finally:
                self._tg = None
                for task in self._asking.values():
                    task.cancel()

    def stop(self) -> None:
        self._stop.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        if changed & {"ping", "discovery"}:
            self._configure(settings.ping, settings.discovery)

    def ask(self, query: MdnsQuery) -> None:
        """Ask once this round; an ask before run() or after stop() is dropped (no answer
        is what the reconciler assumes meanwhile)."""
        tg, gid = self._tg, query.gateway_id
        if tg is None or gid in self._asking:
            return
        names = self._announcements.service_names(gid)
        if not names:  # its record went away: nobody announces it
            self._emit(MdnsFresh(gid, utcnow(), answered=False))
            return
        self._asking[gid] = tg.create_task(self._ask(query, names), name=f"mdns-ask {gid}")

    async def _ask(self, query: MdnsQuery, names: tuple[str, ...]) -> None:
        started = time.monotonic()
        gid = query.gateway_id
        try:
            self.queries += 1
            try:
                answered = await instance_answers(
                    names,
                    query.ip,
                    self._interfaces,
                    self._wait,
                    self._announcements.zeroconf(),
                )
            except (OSError, ValueError) as exc:  # no interface to ask from, a bad scope
                if self._failures.fresh(str(exc), started):
                    log.warning("mdns_query_failed", gateway=gid, error=str(exc))
                answered = False
            self._emit(MdnsFresh(gid, utcnow(), answered))
            # Hold the peer's place until its round is over: one query per round.
            await asyncio.sleep(max(0.0, self._round - (time.monotonic() - started)))
        finally:
            if self._asking.get(gid) is asyncio.current_task():
                del self._asking[gid]
