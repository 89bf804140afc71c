"""config.json to every online peer: by the leader after a change, and on demand.

What is sent is the configuration in force (config.document.ConfigDocument: validated, the one
this clawd runs), never the file as it reads now. A peer is pushed to only when claw-clan
is installed there (the install check passes); the push never creates the install folder,
which would make a peer that lost claw-clan look installed and never be reinstalled.

Every push first claims the peer's fence (fence.py) with the pusher's token: a peer that
holds a stronger leader's token refuses the push ("fenced"), so a stale leader cannot
overwrite what the current one delivered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from clawd.act.fleetops import fence
from clawd.act.fleetops.fence import FenceKind, FenceToken, OnFenced
from clawd.act.fleetops.fenceguard import FenceGuard
from clawd.act.fleetops.leadership import acting_leader, addresses
from clawd.act.fleetops.loop import LeaderLoop, new_backoff
from clawd.act.fleetops.peer_config import config_for_peer
from clawd.act.fleetops.remote import Borrow, PeerAddress, Reach, RemoteError
from clawd.act.fleetops.retry import REPEAT_SECONDS
from clawd.config.document import ConfigDocument
from clawd.config.settings import Settings
from clawd.core.model import PeerStatus
from clawd.core.ratelog import LogLimiter
from clawd.core.text import printable
from clawd.core.trust import Trust
from clawd.decide.fencing import MAX_EPOCH_STEP
from clawd.decide.view import FleetView
from clawd.sources.ssh_client import Connector

log = structlog.get_logger("clawd.distribution")

# "fenced": the peer holds a stronger leader's token and refused us (nothing written).
# "skipped": claw-clan is not installed there (nothing written; the leader reinstalls it).
Result = Literal["pushed", "unchanged", "failed", "fenced", "skipped"]
RESULTS: tuple[Result, ...] = ("pushed", "unchanged", "failed", "fenced", "skipped")
NOT_INSTALLED = "claw-clan is not installed there (install check failed); reinstall it first"


@dataclass(frozen=True, slots=True)
class PushOutcome:
    gateway_id: str
    name: str
    result: Result
    detail: str = ""
    # "fenced": the token the peer holds (not sent over the control socket).
    fenced_by: FenceToken | None = field(default=None, compare=False)
    # Our keys left out of the peer's copy (secrets, a loopback postgres.host); the
    # reason is in `detail`.
    withheld: tuple[str, ...] = ()
    # The trust the document was shaped for (not sent over the control socket).
    trust: Trust = field(default=Trust.NONE, compare=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "gateway_id": self.gateway_id,
            "name": self.name,
            "result": self.result,
            "detail": self.detail,
            "withheld": list(self.withheld),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PushOutcome:
        """What to_dict made (a daemon's answer); an older daemon's lacks `withheld`."""
        result = d.get("result")
        return cls(
            str(d.get("gateway_id", "")),
            str(d.get("name", "")),
            result if result in RESULTS else "failed",
            str(d.get("detail", "")),
            withheld=tuple(str(k) for k in d.get("withheld") or ()),
        )


def remote_config_path(settings: Settings) -> str:
    return f"{settings.recovery.remote_home.rstrip('/')}/config.json"


async def push_one(
    reach: Reach,
    peer: PeerAddress,
    ours: dict[str, Any],
    settings: Settings,
    *,
    token: FenceToken | None = None,
) -> PushOutcome:
    """Write our config.json, shaped for the peer's trust (peer_config.py), to one peer
    unless it already has the same content.

    Only where claw-clan is installed ("skipped" otherwise). The peer's fence is claimed
    first with `token` (default: `settings_token`).
    """
    path = remote_config_path(settings)
    seconds = settings.distribution.timeout_seconds
    if token is None:
        token = fence.settings_token(settings)
    try:
        async with asyncio.timeout(seconds), reach.host(peer) as host:
            check = await host.run(settings.ssh.install_check_command, seconds)
            if check.exit_status is None:
                raise RemoteError(f"install check: {check.stderr_tail}")
            if not check.ok:
                return PushOutcome(peer.gateway_id, peer.name, "skipped", NOT_INSTALLED)
            directory = fence.fence_dir(settings.recovery.remote_home)
            claimed = await fence.claim(host, directory, token, reinstall=False, seconds=seconds)
            stored = claimed.stored
            if (
                claimed.kind is FenceKind.STALE
                and stored is not None
                and stored.gateway_id == (token.gateway_id)
                # Not an epoch we could have reached: a lie, not our own later claim.
                and stored.epoch <= token.epoch + MAX_EPOCH_STEP
            ):
                # Our own later claim (`clawd config push` at epoch 0 after our daemon led
                # in epoch N): we are that leader, so push in its epoch.
                token = dataclasses.replace(token, epoch=stored.epoch)
                claimed = await fence.claim(
                    host, directory, token, reinstall=False, seconds=seconds
                )
            if claimed.kind is FenceKind.STALE and claimed.stored is not None:
                return _fenced(peer, token, claimed.stored)
            current = await host.read(path)
            wanted = config_for_peer(ours, current, peer.trust)
            result: Result = "unchanged" if current == wanted.data else "pushed"
            if result == "pushed":
                # Into the install folder as it is: creating it would fake an install.
                await host.write_atomic(path, wanted.data, 0o600, make_parents=False)
    except TimeoutError:
        return PushOutcome(peer.gateway_id, peer.name, "failed", f"timed out after {seconds:g}s")
    except RemoteError as exc:  # FenceError included
        return PushOutcome(peer.gateway_id, peer.name, "failed", str(exc))
    withheld = tuple(w.key for w in wanted.withheld)
    note = wanted.note(peer.gateway_id)
    return PushOutcome(
        peer.gateway_id, peer.name, result, note, withheld=withheld, trust=peer.trust
    )


def _fenced(peer: PeerAddress, ours: FenceToken, stored: FenceToken) -> PushOutcome:
    if stored.gateway_id == ours.gateway_id:
        # Typically `clawd config push` (epoch 0) while our own daemon, stopped now,
        # had claimed the peer at a later epoch.
        detail = f"the peer holds a later claim of this instance (epoch {stored.epoch})"
    else:
        detail = f"the peer follows another leader ({stored})"
    return PushOutcome(peer.gateway_id, peer.name, "fenced", detail, stored)


async def push_many(
    reach: Reach,
    peers: Iterable[PeerAddress],
    ours: dict[str, Any],
    settings: Settings,
    *,
    token: FenceToken | None = None,
) -> list[PushOutcome]:
    """push_one for every peer, `distribution.concurrency` at a time, in input order."""
    gate = asyncio.Semaphore(settings.distribution.concurrency)
    if token is None:
        token = fence.settings_token(settings)

    async def one(peer: PeerAddress) -> PushOutcome:
        async with gate:
            return await push_one(reach, peer, ours, settings, token=token)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(p)) for p in peers]
    return [t.result() for t in tasks]


def render_outcomes(outcomes: Sequence[PushOutcome]) -> str:
    """A table: peer, result, reason; and a count line."""
    width = max([4, *(len(printable(o.name)) for o in outcomes)])
    lines = [f"{'PEER':<{width}}  {'RESULT':<9}  DETAIL"]
    for o in outcomes:
        lines.append(f"{printable(o.name):<{width}}  {o.result:<9}  {printable(o.detail)}")
    counts = {r: sum(o.result == r for o in outcomes) for r in RESULTS}
    # Fencing and skipping are rare: only mention them when they happened.
    for rare in ("fenced", "skipped"):
        if not counts[rare]:
            del counts[rare]
    lines.append(", ".join(f"{n} {r}" for r, n in counts.items()))
    return "\n".join(lines)


class ConfigDistributor(LeaderLoop):
    """Keeps every online peer's config.json equal to ours while this instance leads."""

    name = "distribution"

    failed_event = "config_distribution_failed"

    def __init__(
        self,
        settings: Settings,
        document: ConfigDocument,
        connector: Connector,
        borrow: Borrow | None = None,
        *,
        on_fenced: OnFenced | None = None,
        recheck: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(settings)
        self.document = document  # the configuration in force: the only one sent
        self.reach = Reach(connector, borrow)
        # Told the token of a leader that outranks us, as a peer's fence reported it.
        self.on_fenced = on_fenced
        # Asked to check a peer's install again (the pinger): one found without claw-clan
        # is then reinstalled by the recoverer.
        self.recheck = recheck
        self._fenced_by: dict[str, FenceToken] = {}  # gateway id -> last logged token
        self._guard = FenceGuard(self.name)  # refuses poisoned tokens peers report
        # gateway id -> (hash of our config, trust it was shaped for) the peer has: a peer
        # trusted further later (`clawd peer trust`) is due again, for the secrets.
        self._delivered: dict[str, tuple[str, Trust]] = {}
        self._problems = LogLimiter(REPEAT_SECONDS)  # (gateway id, reason) logged lately
        self.pushes = 0

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """Called after a reload: config.json changed, so every peer may need it now."""
        self.settings = settings
        self._backoff = new_backoff(settings)
        self._ticker.wake()

    def update_document(self, document: ConfigDocument) -> None:
        """A configuration was put in force (validated): the one to deliver from now."""
        if document.digest != self.document.digest:
            self.document = document
            self._ticker.wake()

    def _pending(self, view: FleetView, config_hash: str) -> list[PeerAddress]:
        now = time.monotonic()
        # A peer without claw-clan gets config.json with its reinstall, not before: a
        # pushed file would make it look installed. Only to peers that proved who they are.
        online = {
            gid
            for gid, r in view.peers.items()
            if r.state.status is PeerStatus.ONLINE and r.state.claw_clan_installed and r.verified
        }
        return [
            peer
            for gid, peer in addresses(view, self.settings.instance.ssh_user).items()
            if gid in online
            and self._delivered.get(gid) != (config_hash, peer.trust)
            and self._backoff.due(gid, now)
        ]

    async def _cycle(self) -> None:
        view = self._view
        if view is None or not self.settings.distribution.enabled or not acting_leader(view):
            return
        ours = self.document
        pending = self._pending(view, ours.digest)
        if pending:
            outcomes = await push_many(
                self.reach, pending, ours.data, self.settings, token=fence.token_for(view)
            )
            self._note(view, outcomes, ours.digest)

    def _note(
        self, view: FleetView, outcomes: Sequence[PushOutcome], config_hash: str
    ) -> list[PushOutcome]:
        """Record what happened; the outcomes as they stand (a refused fence: failed)."""
        now = time.monotonic()
        noted: list[PushOutcome] = []
        for o in outcomes:
            if o.result == "fenced" and o.fenced_by is not None:
                o = self._screened(view, o, o.fenced_by, now)
                noted.append(o)
                continue
            noted.append(o)
            self._fenced_by.pop(o.gateway_id, None)
            self._guard.forget(o.gateway_id)
            if o.result == "failed":
                self._backoff.failed(o.gateway_id, o.detail, now)
                # Retries of a peer that stays down fail alike: one line per reason.
                if self._problems.fresh((o.gateway_id, o.detail), now):
                    log.warning("config_push_failed", gateway=o.gateway_id, error=o.detail)
                continue
            if o.result == "skipped":
                self._skipped(o, now)
                continue
            self._backoff.forget(o.gateway_id)
            self._delivered[o.gateway_id] = (config_hash, o.trust)
            if o.result == "pushed":
                self.pushes += 1
                log.info(
                    "config_pushed", gateway=o.gateway_id, name=o.name, withheld=list(o.withheld)
                )
        return noted

    def _screened(
        self, view: FleetView, o: PushOutcome, stored: FenceToken, now: float
    ) -> PushOutcome:
        """A peer says a stronger leader claimed it: believe it, or refuse the report."""
        refused = self._guard.screen(view, o.gateway_id, stored)
        if refused is None:
            self._fenced(o, stored, now)
            return o
        # Not delivered, and not adopted: the token goes nowhere, the daemon never sees it.
        if not refused.soon:
            self._backoff.failed(o.gateway_id, refused.reason, now)
        return dataclasses.replace(
            o, result="failed", detail=refused.detail(stored), fenced_by=None
        )

    def _skipped(self, o: PushOutcome, now: float) -> None:
        """No claw-clan there: have the pinger look again, so the recoverer reinstalls it."""
        self._backoff.failed(o.gateway_id, o.detail, now)
        if self.recheck is not None:
            self.recheck(o.gateway_id)
        if self._problems.fresh((o.gateway_id, o.detail), now):
            log.warning(
                "config_push_skipped", gateway=o.gateway_id, name=o.name, reason="not_installed"
            )

    def _fenced(self, o: PushOutcome, stored: FenceToken, now: float) -> None:
        """A stronger leader claimed the peer: not delivered; back off, log each token once."""
        self._backoff.failed(o.gateway_id, o.detail, now)
        if self._fenced_by.get(o.gateway_id) != stored:
            self._fenced_by[o.gateway_id] = stored
            log.warning(
                "config_push_fenced",
                gateway=o.gateway_id,
                name=o.name,
                **fence.stored_fields(stored),
            )
        fence.notify_fenced(self.on_fenced, stored, o.gateway_id)

    async def push_now(self, view: FleetView) -> list[PushOutcome]:
        """Every known peer with an address, leader or not (a person asked for it)."""
        ours = self.document
        peers = addresses(view, self.settings.instance.ssh_user).values()
        outcomes = await push_many(
            self.reach, peers, ours.data, self.settings, token=fence.token_for(view)
        )
        return self._note(view, outcomes, ours.digest)

    async def handle_control(self, _request: Mapping[str, Any]) -> dict[str, Any]:
        if self._view is None:
            return {"ok": False, "error": "the daemon has not loaded the fleet yet"}
        outcomes = await self.push_now(self._view)
        # The digest lets `clawd config push` say when the file differs from what was sent.
        return {
            "ok": True,
            "outcomes": [o.to_dict() for o in outcomes],
            "digest": self.document.digest,
        }
