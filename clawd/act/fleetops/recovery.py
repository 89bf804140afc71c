"""Reinstalling claw-clan on peers that answer SSH without it (or with an older version).

Only the acting leader reinstalls, so peers never race each other. Each attempt: check
again on the peer, claim the peer's fence (see fence.py: two leaders that cannot see each
other reinstall a peer at most once per epoch, and a stale leader is refused by the peer),
copy `<home>/scripts/` and the config.json in force (validated, never the file as it
reads now; shaped for the peer's trust, see peer_config.py) over SFTP, run the install
command, check the result; one `reinstall` incident per success and per new failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from clawd.act.fleetops.fence import (
    FenceKind,
    FenceResult,
    FenceToken,
    OnFenced,
    claim,
    fence_dir,
    notify_fenced,
    settings_token,
    stored_fields,
    token_for,
)
from clawd.act.fleetops.fenceguard import FenceGuard
from clawd.act.fleetops.leadership import acting_leader, addresses, is_older
from clawd.act.fleetops.loop import LeaderLoop, new_backoff
from clawd.act.fleetops.payload import collect_scripts
from clawd.act.fleetops.peer_config import config_for_peer
from clawd.act.fleetops.remote import Borrow, PeerAddress, Reach, RemoteError
from clawd.config.document import ConfigDocument
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import EventType, Incident, PeerStatus
from clawd.decide.view import FleetView
from clawd.keep.incidents import IncidentRecorder
from clawd.sources.ssh_client import Connector

log = structlog.get_logger("clawd.recovery")

CHECK_SECONDS = 30.0
CONCURRENT_REINSTALLS = 4


@dataclass(slots=True)
class ReinstallOutcome:
    ok: bool
    reason: str
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    already_installed: bool = False
    # Set when the peer's fence turned us away (ALREADY or STALE): nothing was copied.
    fenced: FenceResult | None = None
    # Our config.json keys left out of the peer's copy (peer_config.py).
    withheld: list[str] = field(default_factory=list)

    def details(self, peer: PeerAddress) -> dict[str, object]:
        out: dict[str, object] = {
            "name": peer.name,
            "ip": peer.host,
            "reason": self.reason,
            "outcome": "ok" if self.ok else "failed",
            "files": self.files,
            "bytes": self.bytes,
            "duration_s": round(self.seconds, 3),
        }
        if self.withheld:
            out["withheld"] = self.withheld
        if self.error:
            out["error"] = self.error
        return out


def needs_reinstall(view: FleetView, ours: str | None) -> dict[str, str]:
    """Verified peers reachable over SSH that lack claw-clan or run an older one: id ->
    reason. (A peer lost claw-clan's state.json with it is still proven by its pinned key.)"""
    wanted: dict[str, str] = {}
    for gid, record in view.peers.items():
        state = record.state
        if state.status is not PeerStatus.ONLINE or not state.ssh_connectivity:
            continue
        if not record.verified:
            continue
        if not state.claw_clan_installed:
            wanted[gid] = "claw-clan not installed"
        elif is_older(record.instance.version, ours):
            wanted[gid] = f"version {record.instance.version} older than {ours}"
    return wanted


async def reinstall(
    reach: Reach,
    peer: PeerAddress,
    settings: Settings,
    ours: dict[str, Any],
    reason: str,
    *,
    token: FenceToken | None = None,
) -> ReinstallOutcome:
    """One reinstall attempt; never raises for a peer-side failure.

    `ours` is the config.json to install (the one in force). `token` claims the peer's
    fence; without one, this instance's at epoch 0 (a run
    outside the daemon, which knows no epoch).
    """
    outcome = ReinstallOutcome(ok=False, reason=reason)
    started = time.monotonic()
    r, ssh = settings.recovery, settings.ssh
    base = r.remote_home.rstrip("/")
    if token is None:
        token = settings_token(settings)
    try:
        files = await asyncio.to_thread(collect_scripts, settings.scripts_dir)
        async with asyncio.timeout(r.timeout_seconds), reach.host(peer) as host:
            if not reason.startswith("version"):
                check = await host.run(ssh.install_check_command, CHECK_SECONDS)
                if check.ok:
                    outcome.ok = outcome.already_installed = True
                    return outcome
            fence = await claim(
                host,
                fence_dir(r.remote_home),
                token,
                reinstall=True,
                seconds=min(CHECK_SECONDS, r.timeout_seconds),
            )
            if fence.kind is not FenceKind.ACCEPTED:
                outcome.fenced = fence
                return outcome
            for f in files:
                await host.write_atomic(f"{base}/{f.relative}", f.data, f.mode)
                outcome.files.append(f.relative)
                outcome.bytes += len(f.data)
            current = await host.read(f"{base}/config.json")
            # Shaped for the peer's trust: a peer trusted on first use gets no secrets.
            config = config_for_peer(ours, current, peer.trust)
            await host.write_atomic(f"{base}/config.json", config.data, 0o600)
            outcome.files.append("config.json")
            outcome.bytes += len(config.data)
            outcome.withheld = [w.key for w in config.withheld]
            done = await host.run(r.install_command, r.timeout_seconds)
            if not done.ok:
                status = "timed out" if done.exit_status is None else f"exit {done.exit_status}"
                outcome.error = f"install command failed ({status}): {done.stderr_tail}".strip()
                return outcome
            check = await host.run(ssh.install_check_command, CHECK_SECONDS)
            if not check.ok:
                outcome.error = "install check still fails after the install command"
                return outcome
            outcome.ok = True
    except TimeoutError:
        outcome.error = f"timed out after {r.timeout_seconds:g}s"
    except (RemoteError, ClawdError) as exc:
        outcome.error = str(exc)
    finally:
        outcome.seconds = time.monotonic() - started
    return outcome


class Recoverer(LeaderLoop):
    """While this instance leads: reinstall peers that need it, with backoff on failure."""

    name = "recovery"

    failed_event = "recovery_failed"

    def __init__(
        self,
        settings: Settings,
        document: ConfigDocument,
        connector: Connector,
        recorder: IncidentRecorder,
        recheck: Callable[[str], None],
        borrow: Borrow | None = None,
        *,
        on_fenced: OnFenced | None = None,
    ) -> None:
        super().__init__(settings)
        self.document = document  # the configuration in force: the one installed
        self.connector = connector
        self.recorder = recorder
        self.recheck = recheck
        self.borrow = borrow
        # Told the token of a leader that outranks us, as a peer's fence reported it.
        self.on_fenced = on_fenced
        self._busy: set[str] = set()
        self._fenced_by: dict[str, FenceToken] = {}  # gateway id -> last logged token
        self._guard = FenceGuard(self.name)  # refuses poisoned tokens peers report
        self.reinstalls = 0

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """New settings from the next cycle on; the SSH options (of the connector it shares
        with the distributor) from the next connection."""
        if changed & {"ping", "ssh", "detection"}:
            self.connector.update(settings.ssh)
        old, self.settings = self.settings, settings
        if settings.recovery != old.recovery:
            self._backoff = new_backoff(settings)
        self._ticker.wake()

    def update_document(self, document: ConfigDocument) -> None:
        """A configuration was put in force: later reinstalls copy that one."""
        self.document = document

    async def _cycle(self) -> None:
        view = self._view
        if view is None or not self.settings.recovery.enabled or not acting_leader(view):
            return
        now = time.monotonic()
        wanted = needs_reinstall(view, self.settings.instance.version)
        peers = addresses(view, self.settings.instance.ssh_user)
        todo = [
            (peers[gid], reason)
            for gid, reason in sorted(wanted.items())
            if gid in peers and gid not in self._busy and self._backoff.due(gid, now)
        ]
        if not todo:
            return
        gate = asyncio.Semaphore(CONCURRENT_REINSTALLS)
        token = token_for(view)

        async def one(peer: PeerAddress, reason: str) -> None:
            async with gate:
                await self._attempt(peer, reason, token, view)

        async with asyncio.TaskGroup() as tg:
            for peer, reason in todo:
                tg.create_task(one(peer, reason))

    async def _attempt(
        self, peer: PeerAddress, reason: str, token: FenceToken, view: FleetView
    ) -> None:
        gid = peer.gateway_id
        self._busy.add(gid)
        try:
            log.info("reinstall_started", gateway=gid, name=peer.name, reason=reason)
            outcome = await reinstall(
                Reach(self.connector, self.borrow),
                peer,
                self.settings,
                self.document.data,
                reason,
                token=token,
            )
        finally:
            self._busy.discard(gid)
        now = time.monotonic()
        if outcome.fenced is not None:
            self._fenced(peer, reason, outcome.fenced, token, view, now)
            return
        self._fenced_by.pop(gid, None)
        self._guard.forget(gid)
        if outcome.ok:
            self.recheck(gid)
            # The pinger confirms the install within a ping round or two; until then the
            # view still says "not installed", which must not start a second reinstall.
            self._hold(gid, reason, now)
            if outcome.already_installed:
                log.info("reinstall_not_needed", gateway=gid, name=peer.name)
                return
            self.reinstalls += 1
            await self.recorder.record(Incident(gid, EventType.REINSTALL, outcome.details(peer)))
            return
        error = outcome.error or "unknown error"
        if self._backoff.failed(gid, error, now):
            await self.recorder.record(Incident(gid, EventType.REINSTALL, outcome.details(peer)))

    def _hold(self, gid: str, reason: str, now: float) -> None:
        r = self.settings.recovery
        hold = r.retry_max_seconds if reason.startswith("version") else r.retry_initial_seconds
        self._backoff.hold(gid, now + hold)

    def _fenced(
        self,
        peer: PeerAddress,
        reason: str,
        fence: FenceResult,
        token: FenceToken,
        view: FleetView,
        now: float,
    ) -> None:
        """The peer's fence turned us away: nothing was copied, so no incident."""
        gid = peer.gateway_id
        if fence.kind is FenceKind.ALREADY:
            # Another leader of our epoch owns this reinstall and may be running it now:
            # wait as after our own success, and let the pinger look again.
            self._fenced_by.pop(gid, None)
            self.recheck(gid)
            self._hold(gid, reason, now)
            fields = _fenced_fields(peer, "already_done_this_epoch", token)
            log.info("reinstall_fenced", **fields, owner=fence.owner)
            return
        stored = fence.stored
        assert stored is not None  # parse_answer guarantees one for STALE
        refused = self._guard.screen(view, gid, stored)
        if refused is not None:
            # Neither adopted nor a claim: nothing copied; retried as a failure would be
            # (on the next round when the reporter is only not verified yet).
            if not refused.soon:
                self._backoff.failed(gid, refused.detail(stored), now)
            return
        self._backoff.failed(gid, f"fenced by {stored}", now)
        if self._fenced_by.get(gid) != stored:
            self._fenced_by[gid] = stored
            fields = _fenced_fields(peer, "stale_leader", token)
            log.warning("reinstall_fenced", **fields, **stored_fields(stored))
        notify_fenced(self.on_fenced, stored, gid)


def _fenced_fields(peer: PeerAddress, reason: str, token: FenceToken) -> dict[str, object]:
    """What every `reinstall_fenced` line says, whichever way the fence turned us away."""
    return {"gateway": peer.gateway_id, "name": peer.name, "reason": reason, "epoch": token.epoch}
