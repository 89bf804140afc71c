"""The fleet as the reconciler sees it: plain, immutable records, and what one decision
changes. No logic beyond reading them (the rules live in clawd/decide/reconciler.py and
clawd/detection/)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clawd.core.model import Incident, Instance, PeerState, PeerStatus
from clawd.core.observations import MdnsQuery, ProbeRequest, Verdict
from clawd.core.trust import Trust
from clawd.decide.accrual import ArrivalHistory
from clawd.decide.rules import Evidence, Probes
from clawd.decide.suspicion import DetectorSettings, Suspicion

REPORTED = (PeerStatus.ONLINE, PeerStatus.OFFLINE)


@dataclass(frozen=True, slots=True)
class Thresholds:
    mdns_grace_misses: int = 10
    # How long an mDNS answer counts as "still announcing": one ping round (the interval
    # with its jitter, the ping's timeout, the query's own wait). The next round asks again.
    mdns_fresh: timedelta = timedelta(seconds=17)
    detector: DetectorSettings = field(default_factory=lambda: DetectorSettings(kind="threshold"))
    interval_seconds: float = 10.0
    recover_after: int = 1
    flap_high: float = 50.0
    flap_low: float = 25.0
    # Indirect probes: helpers asked per suspect peer (0 = off), and how long to wait.
    probes: int = 0
    probe_wait: timedelta = timedelta(seconds=10)
    partition_min_peers: int = 3
    partition_fraction: float = 0.3
    partition_window: timedelta = timedelta(seconds=20)
    # At start, the election waits until every known peer has answered its first ping
    # (at least `settle_min`: mDNS needs a moment to find peers), or `settle` passes:
    # one election against the stored leader, not one per peer as each answers.
    settle: timedelta = timedelta(0)
    settle_min: timedelta = timedelta(0)
    # Observers per machine when the fleet shares one record (0: this machine probes every
    # peer; see decide/assignment.py).
    observers: int = 0
    # The fleet shares one record that judges its outages (backend postgres with the
    # leader lease): many machines dropping together are grouped there into one partition
    # (keep/store/fleet_partition.py), so this instance reports each outage as it sees it.
    shared_record: bool = False


@dataclass(frozen=True, slots=True)
class Outage:
    """The outage reported by the last `offline` incident (for `recovery` details)."""

    last_seen: datetime | None  # the last successful ping before it
    judged: datetime | None  # when the offline verdict came


@dataclass(frozen=True, slots=True)
class PeerRecord:
    instance: Instance
    state: PeerState
    # When the current status began (for downtime in `recovery` details).
    since: datetime | None = None
    tcp_reachable: bool = False
    # The last up/down status an incident was written for.
    reported: PeerStatus = PeerStatus.UNKNOWN
    arrivals: ArrivalHistory = field(default_factory=ArrivalHistory)
    results: tuple[bool, ...] = ()  # the last 21 ping results, oldest first
    ok_streak: int = 0
    failing_since: datetime | None = None  # first failed ping of the current streak
    mdns_withdrawn: bool = False
    # When it last answered an mDNS query for its own instance (asked while SSH fails);
    # None: not asked in this failure streak, or the last query went unanswered.
    mdns_answered_at: datetime | None = None
    probes: Probes = Probes.NONE
    probes_at: datetime | None = None
    reachable_by: tuple[str, ...] = ()
    suspicion: Suspicion = Suspicion.NONE
    phi: float = 0.0
    rule: str = "no-news"
    flapping: bool = False
    flap_percent: float = 0.0
    unreachable_reported: bool = False
    # Released from a partition that ended: failures until then are still the
    # partition's (a link that was cut may need a reconnect backoff to come back).
    partition_hold_until: datetime | None = None
    outage: Outage | None = None
    # Proven over SSH in this run: a trusted host key, and the peer's own state.json
    # names this gateway id. Only verified peers count for the election.
    verified: bool = False
    trust: Trust = Trust.NONE
    # Listed in config.json's `peers`: the operator says this id lives at this address.
    static: bool = False
    # Who the peer's state.json named when that was not this gateway id (logged once).
    answered_as: str | None = None


@dataclass(frozen=True, slots=True)
class Settle:
    """The start-up wait before the first election."""

    earliest: datetime
    until: datetime
    unheard: frozenset[str]  # known peers that have not answered a ping yet
    # The leader the store had, and how long past `until` the wait holds for it while it
    # has neither answered nor been judged offline: on a busy machine its first SSH
    # handshake can outlast `until`, and electing the next one meanwhile would record two
    # leader changes for a restart that found the same leader.
    stored_leader: str | None = None
    leader_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Partition:
    started: datetime
    members: frozenset[str]  # still down
    total: int  # members over its lifetime
    reachable_via_peers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Lease:
    """Leadership decided through PostgreSQL: the lease row as last read, and whether this
    instance holds the lock. `floor`: the highest epoch a peer's fence refused us with (the
    holder then takes an epoch past it)."""

    leader: str | None = None
    epoch: int = 0
    held: bool = False
    floor: int = 0


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which peers this machine probes (decide/assignment.py), and what it was computed
    from: computed again only when the members or the verified peers change."""

    members: frozenset[str]
    targets: frozenset[str]
    k: int
    mine: frozenset[str]


@dataclass(frozen=True, slots=True)
class FleetView:
    me: Instance
    peers: Mapping[str, PeerRecord] = field(default_factory=dict)
    leader: str | None = None
    # Leadership epoch: raised on every leader change this instance records (and past any
    # higher epoch it learns of), so a stale leader's actions can be fenced off on peers.
    epoch: int = 0
    doubting: bool = False
    partition: Partition | None = None
    settle: Settle | None = None  # set while the start-up election waits
    # Set with backend postgres: the lease decides leader and epoch (decide/lease.py).
    lease: Lease | None = None
    # Set when each machine is probed by k observers (backend postgres,
    # `detection.observers`): the peers this one probes; the others' status is the fleet's
    # verdict (`verdicts`), read from the shared record. None: this machine probes them all.
    assignment: Assignment | None = None
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    # The lease sessions on the shared database (the machines that can observe); None:
    # not read yet, so no assignment yet (every peer is probed).
    sessions: frozenset[str] | None = None

    # The peers this machine pings when it has an assignment: its share, and as the leader
    # every peer that runs no clawd (the reinstall candidates: the leader checks them).
    probed: frozenset[str] = frozenset()

    def probes(self, gateway_id: str) -> bool:
        """Does this machine probe that peer (rather than follow the fleet's verdict)?"""
        if self.assignment is None or gateway_id in self.probed:
            return True
        record = self.peers.get(gateway_id)
        return record is None or not record.verified


@dataclass(frozen=True, slots=True)
class Note:
    """Something for the journal that is not an incident (unresponsive, self-doubt)."""

    event: str
    gateway_id: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Decision:
    view: FleetView
    incidents: list[Incident] = field(default_factory=list)
    states: list[PeerState] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    probes: list[ProbeRequest] = field(default_factory=list)
    # Peers failing SSH to ask over mDNS whether their announcer still answers.
    mdns_queries: list[MdnsQuery] = field(default_factory=list)
    # Peers whose identity (state.json) should be read again at their next round.
    rechecks: list[str] = field(default_factory=list)
    # Peers the operator forgot (`clawd peer forget`): the keeper deletes their files.
    forgotten: list[str] = field(default_factory=list)
    # Did anything that leadership depends on change? (Saves an O(peers) election.)
    moved: bool = False
    # This decision's own copy of the peers map, made at its first change (one copy
    # per observation, however many records it touches).
    own_peers: dict[str, PeerRecord] | None = None
    # The view before this observation: what persisted states are compared with.
    origin: Mapping[str, PeerRecord] = field(default_factory=dict)

    def put(self, record: PeerRecord) -> None:
        """Replace one peer's record in the new view."""
        if self.own_peers is None or self.view.peers is not self.own_peers:
            self.own_peers = dict(self.view.peers)
            self.view = dataclasses.replace(self.view, peers=self.own_peers)
        self.own_peers[record.instance.gateway_id] = record

    def save_state(self, state: PeerState) -> None:
        """Persist this state (once per peer and decision: the last one wins)."""
        for n, queued in enumerate(self.states):
            if queued.gateway_id == state.gateway_id:
                self.states[n] = state
                return
        self.states.append(state)


def initial_view(
    me: Instance,
    instances: Mapping[str, Instance],
    states: Mapping[str, PeerState],
    leader: str | None,
) -> FleetView:
    """The view at start, from what the store remembers; no incident is re-raised."""
    peers: dict[str, PeerRecord] = {}
    for gid, inst in instances.items():
        if gid == me.gateway_id:
            continue
        state = states.get(gid) or PeerState(gateway_id=gid)
        reported = state.status if state.status in REPORTED else PeerStatus.UNKNOWN
        outage = (
            Outage(state.last_seen, state.updated_at) if reported is PeerStatus.OFFLINE else None
        )
        peers[gid] = PeerRecord(
            inst, state, since=state.updated_at, reported=reported, outage=outage
        )
    return FleetView(me=me, peers=peers, leader=leader)


def settled(view: FleetView, now: datetime) -> bool:
    """May the election run: no start-up wait, or its time is up, or no peer that has not
    answered yet could still win it."""
    settle = view.settle
    if settle is None:
        return True
    if now >= settle.until:
        return not _waits_for_stored_leader(view, settle, now)
    if now < settle.earliest:
        return False
    confirmed = [view.me] + [
        r.instance
        for g, r in view.peers.items()
        if g not in settle.unheard and r.state.status is PeerStatus.ONLINE and r.verified
    ]
    best = min((_rank(i) for i in confirmed if i.lead_number is not None), default=None)
    for gid in settle.unheard:
        record = view.peers.get(gid)
        if record is None or record.instance.lead_number is None:
            continue  # cannot lead
        if best is None or _rank(record.instance) < best:
            return False
    return True


def _waits_for_stored_leader(view: FleetView, settle: Settle, now: datetime) -> bool:
    leader = settle.stored_leader
    if leader is None or leader not in settle.unheard or settle.leader_until is None:
        return False
    record = view.peers.get(leader)
    return (
        record is not None
        and now < settle.leader_until
        and record.state.status is not PeerStatus.OFFLINE
    )


def _rank(inst: Instance) -> tuple[int, str]:
    assert inst.lead_number is not None
    return (inst.lead_number, inst.gateway_id)


def elect_leader(view: FleetView) -> str | None:
    """Lowest lead_number among online verified instances, self included; ties by gateway
    id. An unverified peer never leads: an announcement alone proves nothing."""
    candidates = [view.me] + [
        r.instance
        for r in view.peers.values()
        if r.state.status is PeerStatus.ONLINE and r.verified
    ]
    ranked = [c for c in candidates if c.lead_number is not None]
    if not ranked:
        return None
    return min(ranked, key=_rank).gateway_id


def partitioned(view: FleetView, record: PeerRecord) -> bool:
    """Part of a partition, or just released from one (held for one more window)."""
    partition = view.partition
    return record.partition_hold_until is not None or (
        partition is not None and record.instance.gateway_id in partition.members
    )


def mdns_fresh(record: PeerRecord, t: Thresholds, now: datetime) -> bool:
    """Did it answer an mDNS query for its own instance within the last round? A record
    in the cache is not enough: a powered-off peer's stays there for up to 75 minutes."""
    answered = record.mdns_answered_at
    return answered is not None and now - answered <= t.mdns_fresh


def evidence(view: FleetView, record: PeerRecord, t: Thresholds, now: datetime) -> Evidence:
    state = record.state
    return Evidence(
        status=state.status,
        last_ping_ok=None if state.last_ping_attempt is None else state.missed_pings == 0,
        ok_streak=record.ok_streak,
        missed=state.missed_pings,
        tcp_reachable=record.tcp_reachable,
        mdns=mdns_fresh(record, t, now),
        mdns_cached=state.mdns_broadcasting,
        mdns_withdrawn=record.mdns_withdrawn,
        suspicion=record.suspicion,
        phi=record.phi,
        probes=record.probes,
        partitioned=partitioned(view, record),
        doubting=view.doubting,
        mdns_grace_misses=t.mdns_grace_misses,
        recover_after=t.recover_after,
    )
