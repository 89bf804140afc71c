"""config.json to every online peer: by the leader after a change, and on demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from clawd.fleetops.leadership import acting_leader, addresses
from clawd.fleetops.loop import LeaderLoop, new_backoff
from clawd.fleetops.payload import config_for_peer, read_config
from clawd.fleetops.remote import Borrow, PeerAddress, RemoteError, RemoteHost
from clawd.model import PeerStatus
from clawd.reconciler import FleetView
from clawd.settings import Settings
from clawd.ssh_client import Connector
from clawd.status_view import printable

log = structlog.get_logger("clawd.distribution")

Result = Literal["pushed", "unchanged", "failed"]


@dataclass(frozen=True, slots=True)
class PushOutcome:
    gateway_id: str
    name: str
    result: Result
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def remote_config_path(settings: Settings) -> str:
    return f"{settings.recovery.remote_home.rstrip('/')}/config.json"


async def push_one(
    connector: Connector,
    peer: PeerAddress,
    ours: dict[str, Any],
    settings: Settings,
    borrow: Borrow | None = None,
) -> PushOutcome:
    """Write our config.json to one peer unless it already has the same content."""
    path = remote_config_path(settings)
    seconds = settings.distribution.timeout_seconds
    try:
        async with asyncio.timeout(seconds), RemoteHost(connector, peer, borrow) as host:
            current = await host.read(path)
            wanted = config_for_peer(ours, current)
            if current == wanted:
                return PushOutcome(peer.gateway_id, peer.name, "unchanged")
            await host.write_atomic(path, wanted, 0o600)
    except TimeoutError:
        return PushOutcome(peer.gateway_id, peer.name, "failed", f"timed out after {seconds:g}s")
    except RemoteError as exc:
        return PushOutcome(peer.gateway_id, peer.name, "failed", str(exc))
    return PushOutcome(peer.gateway_id, peer.name, "pushed")


async def push_many(
    connector: Connector,
    peers: Iterable[PeerAddress],
    ours: dict[str, Any],
    settings: Settings,
    borrow: Borrow | None = None,
) -> list[PushOutcome]:
    """push_one for every peer, `distribution.concurrency` at a time, in input order."""
    gate = asyncio.Semaphore(settings.distribution.concurrency)

    async def one(peer: PeerAddress) -> PushOutcome:
        async with gate:
            return await push_one(connector, peer, ours, settings, borrow)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(p)) for p in peers]
    return [t.result() for t in tasks]


def render_outcomes(outcomes: Sequence[PushOutcome]) -> str:
    """A table: peer, result, reason; and a count line."""
    width = max([4, *(len(printable(o.name)) for o in outcomes)])
    lines = [f"{'PEER':<{width}}  {'RESULT':<9}  DETAIL"]
    for o in outcomes:
        lines.append(f"{printable(o.name):<{width}}  {o.result:<9}  {printable(o.detail)}")
    counts = {r: sum(o.result == r for o in outcomes) for r in ("pushed", "unchanged", "failed")}
    lines.append(", ".join(f"{n} {r}" for r, n in counts.items()))
    return "\n".join(lines)


class ConfigDistributor(LeaderLoop):
    """Keeps every online peer's config.json equal to ours while this instance leads."""

    failed_event = "config_distribution_failed"

    def __init__(
        self,
        settings: Settings,
        config_path: Path,
        connector: Connector,
        borrow: Borrow | None = None,
    ) -> None:
        super().__init__(settings)
        self.config_path = config_path
        self.connector = connector
        self.borrow = borrow
        self._delivered: dict[str, str] = {}  # gateway id -> hash of our config it has
        self.pushes = 0

    def update_settings(self, settings: Settings) -> None:
        """Called after a reload: config.json changed, so every peer may need it now."""
        self.settings = settings
        self._backoff = new_backoff(settings)
        self._wake.set()

    def _pending(self, view: FleetView, config_hash: str) -> list[PeerAddress]:
        now = time.monotonic()
        # A peer without claw-clan gets config.json with its reinstall, not before: a
        # pushed file would make it look installed.
        online = {
            gid
            for gid, r in view.peers.items()
            if r.state.status is PeerStatus.ONLINE and r.state.claw_clan_installed
        }
        return [
            peer
            for gid, peer in addresses(view, self.settings.instance.ssh_user).items()
            if gid in online
            and self._delivered.get(gid) != config_hash
            and self._backoff.due(gid, now)
        ]

    async def _cycle(self) -> None:
        view = self._view
        if view is None or not self.settings.distribution.enabled or not acting_leader(view):
            return
        ours, config_hash = await asyncio.to_thread(read_config, self.config_path)
        pending = self._pending(view, config_hash)
        if pending:
            outcomes = await push_many(self.connector, pending, ours, self.settings, self.borrow)
            self._note(outcomes, config_hash)

    def _note(self, outcomes: Sequence[PushOutcome], config_hash: str) -> None:
        now = time.monotonic()
        for o in outcomes:
            if o.result == "failed":
                if self._backoff.failed(o.gateway_id, o.detail, now):
                    log.warning("config_push_failed", gateway=o.gateway_id, error=o.detail)
                continue
            self._backoff.forget(o.gateway_id)
            self._delivered[o.gateway_id] = config_hash
            if o.result == "pushed":
                self.pushes += 1
                log.info("config_pushed", gateway=o.gateway_id, name=o.name)

    async def push_now(self, view: FleetView) -> list[PushOutcome]:
        """Every known peer with an address, leader or not (a person asked for it)."""
        ours, config_hash = await asyncio.to_thread(read_config, self.config_path)
        peers = addresses(view, self.settings.instance.ssh_user).values()
        outcomes = await push_many(self.connector, peers, ours, self.settings, self.borrow)
        self._note(outcomes, config_hash)
        return outcomes

    async def handle_control(self, _request: Mapping[str, Any]) -> dict[str, Any]:
        if self._view is None:
            return {"ok": False, "error": "the daemon has not loaded the fleet yet"}
        outcomes = await self.push_now(self._view)
        return {"ok": True, "outcomes": [o.to_dict() for o in outcomes]}
