"""The fleet keeper: observations in, reconciler decisions out to the store and journal.

This is where the clock is read (the reconciler itself reads none), where ping
attempts become `ping_history` rows, and where peer states go to the peer files,
coalesced (keep/peer_files.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from clawd.config.settings import Settings, self_instance
from clawd.core.model import EventType, PeerStatus, Ping, utcnow
from clawd.core.observations import (
    MdnsQuery,
    Observation,
    PeerConfigured,
    PeerForgotten,
    PingResult,
    ProbeRequest,
    SelfChanged,
    SelfHealth,
    Started,
    Tick,
)
from clawd.decide.assignment import observers_of
from clawd.decide.from_settings import guard_settings, static_peers, thresholds
from clawd.decide.guard import SelfHealthGuard
from clawd.decide.reconciler import Reconciler
from clawd.decide.view import Decision, FleetView, Note
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.peer_files import PeerFileWriter, observed_facts
from clawd.keep.store.repository import Repository

log = structlog.get_logger("clawd.keep.keeper")

TICK_SECONDS = 1.0
# A machine whose clawd ran a query on the shared database within this many ping intervals
# is alive (keep/store/fleet_record.py): not offline, however many observers cannot reach it.
ALIVE_INTERVALS = 3
MAX_BATCH = 1000


def summary(view: FleetView) -> str:
    """One line for systemd's STATUS=: '5 peers: 4 online, 1 offline; leader gw-a'."""
    counts = Counter(r.state.status.value for r in view.peers.values())
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    peers = f"{len(view.peers)} peer{'s' if len(view.peers) != 1 else ''}"
    text = f"{peers}: {parts}" if parts else peers
    return f"{text}; leader {view.leader or 'none'}"


@dataclass(frozen=True, slots=True)
class KeeperHooks:
    """Who the keeper tells, and asks, besides the store: each optional."""

    # Hears the new view after every batch that changed it.
    on_change: Callable[[FleetView], None] | None = None
    # Judges this daemon's own health (a frozen loop must not declare peers offline).
    guard: SelfHealthGuard | None = None
    # How long the event loop has been stalled, for the guard.
    loop_stall: Callable[[], float] | None = None
    # Sends the reconciler's indirect-probe requests out.
    on_probe: Callable[[ProbeRequest], None] | None = None
    # Asks peers failing SSH whether their mDNS announcer still answers.
    on_mdns_query: Callable[[MdnsQuery], None] | None = None
    # Asks the pinger to read these peers' identity (state.json) at their next round.
    on_recheck: Callable[[str], None] | None = None
    # Hears the guard's verdict flip (True: doubting itself).
    on_doubt: Callable[[bool], None] | None = None


class FleetKeeper:
    """The only writer of the fleet view: sources hand it observations, a reload its new
    thresholds (reconfigure); it stops after the sources and drains its queue."""

    name = "fleet"

    def __init__(
        self,
        repo: Repository,
        recorder: IncidentRecorder,
        reconciler: Reconciler,
        view: FleetView,
        *,
        persist_interval: float = 30.0,
        hooks: KeeperHooks | None = None,
    ) -> None:
        self.repo = repo
        self.recorder = recorder
        self.reconciler = reconciler
        self.view = view
        self.peer_files = PeerFileWriter(
            repo, persist_interval, shared=lambda gid: self.view.probes(gid)
        )
        self.hooks = hooks or KeeperHooks()
        self.queue: asyncio.Queue[Observation | None] = asyncio.Queue()
        self._pings: list[Ping] = []
        self.observations = 0
        # Observations someone waits for (by identity: held in the queue until applied).
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def emit(self, obs: Observation) -> None:
        """For sources: hand over an observation (never blocks)."""
        self.queue.put_nowait(obs)

    def stop(self) -> None:
        self.queue.put_nowait(None)

    async def forget(self, gateway_id: str, wait_seconds: float) -> bool:
        """`clawd peer forget`: drop the peer and delete its files; True once done, False
        if the keeper did not get to it within `wait_seconds`."""
        obs = PeerForgotten(gateway_id, utcnow())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[id(obs)] = done
        self.emit(obs)
        try:
            async with asyncio.timeout(wait_seconds):
                await asyncio.shield(done)
        except TimeoutError:
            return False
        return True

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """Live reload: new thresholds from the next observation on; configured peers and
        this instance's details go in as observations (the election re-runs, the epoch is
        kept)."""
        if changed & {"ping", "ssh", "detection", "backend", "storage"}:
            self.reconciler = Reconciler(thresholds(settings))
            if self.hooks.guard is not None:
                self.hooks.guard.configure(guard_settings(settings))
        if "storage" in changed:
            self.peer_files.interval = settings.storage.peer_file_interval_seconds
        if "peers" in changed:
            for instance in static_peers(settings):
                self.emit(PeerConfigured(instance, utcnow()))
        if "instance" in changed:
            # Registered once, when first seen: a reload does not register it again.
            me = self_instance(settings)
            me = dataclasses.replace(me, registered_at=self.view.me.registered_at)
            self.emit(SelfChanged(me, utcnow()))

    async def run(self, ready: asyncio.Event) -> None:
        # The election waits for the peers' first answers, then checks the stored leader.
        await self._apply(Started(utcnow()))
        ready.set()
        while True:
            try:
                # asyncio.timeout, not wait_for: no extra task per wait on this hot path.
                async with asyncio.timeout(TICK_SECONDS):
                    first = await self.queue.get()
            except TimeoutError:
                first = Tick(utcnow())
            batch = [first]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            stopping = None in batch
            changed = await self._check_self()
            for obs in batch:
                if obs is not None:
                    changed |= await self._apply(obs)
                    if self._waiters:
                        self._applied(obs)
            if self._pings:
                pings, self._pings = self._pings, []
                await self.repo.record_pings(pings)
            if changed and self.hooks.on_change is not None:
                self.hooks.on_change(self.view)
            if stopping:
                await self.peer_files.flush(force=True)
                return

    def _applied(self, obs: Observation) -> None:
        done = self._waiters.pop(id(obs), None)
        if done is not None and not done.done():
            done.set_result(None)

    async def _check_self(self) -> bool:
        """Ask the self-health guard before judging a batch (a stall shows right here)."""
        guard = self.hooks.guard
        if guard is None:
            return False
        now = time.monotonic()
        if self.hooks.loop_stall is not None:
            guard.loop_lag(self.hooks.loop_stall(), now)
        change = guard.poll(now)
        if change is None:
            return False
        me = self.view.me.gateway_id
        event = "self_doubt" if change.doubting else "self_trust"
        self.recorder.note(Note(event, me, change.fields))
        if self.hooks.on_doubt is not None:
            self.hooks.on_doubt(change.doubting)
        return await self._apply(SelfHealth(utcnow(), change.doubting, change.reason))

    async def _apply(self, obs: Observation) -> bool:
        now = utcnow()
        self.observations += 1
        if isinstance(obs, PingResult) and self.hooks.guard is not None:
            self.hooks.guard.ping(obs.gateway_id, obs.success)
        previous_leader = self.view.leader
        previous = self.view.peers
        decision = self.reconciler.apply(self.view, obs, now)
        self.view = decision.view
        if isinstance(obs, PingResult):
            self._pings.append(
                Ping(
                    source_gateway=self.view.me.gateway_id,
                    target_gateway=obs.gateway_id,
                    success=obs.success,
                    timestamp=obs.at,
                    response_ms=obs.response_ms,
                )
            )
        await self._persist(decision)
        if self.hooks.on_probe is not None:
            for request in decision.probes:
                self.hooks.on_probe(request)
        if self.hooks.on_mdns_query is not None:
            for query in decision.mdns_queries:
                self.hooks.on_mdns_query(query)
        if self.hooks.on_recheck is not None:
            for gid in decision.rechecks:
                self.hooks.on_recheck(gid)
        if self.view.leader != previous_leader:
            await self.repo.set_leader(self.view.leader)
        if isinstance(obs, Tick):
            await self.peer_files.flush(force=False)
        if decision.moved or decision.instances or decision.incidents:
            return True
        # Leader work (reinstall, config push) acts on these facts too, not only on moves.
        return any(
            (old := previous.get(state.gateway_id)) is None
            or observed_facts(old.state) != observed_facts(state)
            for state in decision.states
        )

    def _observers(self, target: str) -> int:
        """The machines that probe `target`: its assigned observers, or (full mesh) this
        instance and the verified peers it sees up."""
        assignment = self.view.assignment
        if assignment is not None:
            return len(observers_of(target, assignment.members, assignment.k))
        up = (PeerStatus.ONLINE, PeerStatus.UNRESPONSIVE)
        peers = self.view.peers.values()
        seen = sum(
            1
            for p in peers
            if p.instance.gateway_id != target and p.verified and p.state.status in up
        )
        return 1 + seen

    async def _persist(self, decision: Decision) -> None:
        for gid in decision.forgotten:
            self.peer_files.forget(gid)
            await self.repo.forget_peer(gid)
            log.info("peer_forgotten", gateway_id=gid)
        for instance in decision.instances:
            await self.repo.upsert_instance(instance)
        for state in decision.states:
            await self.peer_files.offer(state)
        for incident in decision.incidents:
            if incident.event_type is EventType.OFFLINE:
                # How many could have seen it: a shared record's fleet verdict needs most;
                # and how long a silence of its clawd on the database means it is down
                # (its lease session queries every interval).
                incident.details["observers"] = self._observers(incident.gateway_id)
                t = self.reconciler.t
                incident.details["alive_window_s"] = ALIVE_INTERVALS * t.interval_seconds
                # And when it dropped together with others: one partition, not N outages
                # (keep/store/fleet_partition.py, with this instance's rule).
                incident.details["partition_window_s"] = t.partition_window.total_seconds()
                incident.details["partition_min_peers"] = t.partition_min_peers
                incident.details["partition_fraction"] = t.partition_fraction
            await self.recorder.record(incident)
        for note in decision.notes:
            self.recorder.note(note)
