"""The pure state machine: (fleet view, observation, now) -> (new view, what to record).

No I/O and no clock reads: every rule here is unit-tested with plain values.

Status rules (per peer):
- a successful ping            -> online
- SSH fails, peer still answers (its TCP port accepts, or it is in mDNS) -> unresponsive;
  mDNS alone is trusted for `mdns_grace_misses` misses only, because a peer that
  died without a goodbye stays in other machines' mDNS caches for 20-75 minutes
- `offline_after_missed` consecutive misses and no other sign of life -> offline
- otherwise the status stays as it is (a miss or two is not news)

Incidents mark changes between up and down, once per transition: `offline`,
`online` (first seen, or back from unresponsive/unknown), `recovery` (back from
offline). A peer changing status `flap_transitions` times within `flap_window`
is flapping: one note when it starts, incidents held until it has been stable for
a whole window, then one incident if it ended somewhere else than it started.
Leader: the online instance (self included) with the lowest lead_number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clawd.model import EventType, Incident, Instance, PeerState, PeerStatus
from clawd.observations import (
    MdnsGone,
    MdnsSeen,
    Observation,
    PeerConfigured,
    PingResult,
    Tick,
)

REPORTED = (PeerStatus.ONLINE, PeerStatus.OFFLINE)


@dataclass(frozen=True, slots=True)
class Thresholds:
    offline_after_missed: int = 3
    mdns_grace_misses: int = 10
    flap_transitions: int = 4
    flap_window: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    instance: Instance
    state: PeerState
    # When the current status began (for downtime in `recovery` details).
    since: datetime | None = None
    tcp_reachable: bool = False
    # Status transition times inside the flap window, oldest first.
    transitions: tuple[datetime, ...] = ()
    flapping: bool = False
    # The last up/down status an incident was written for.
    reported: PeerStatus = PeerStatus.UNKNOWN


@dataclass(frozen=True, slots=True)
class FleetView:
    me: Instance
    peers: Mapping[str, PeerRecord] = field(default_factory=dict)
    leader: str | None = None


@dataclass(frozen=True, slots=True)
class Note:
    """Something for the journal that is not an incident (flapping, unresponsive)."""

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
    # Did anything that leadership depends on change? (Saves an O(peers) election.)
    moved: bool = False


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
        peers[gid] = PeerRecord(inst, state, since=state.updated_at, reported=reported)
    return FleetView(me=me, peers=peers, leader=leader)


def elect_leader(view: FleetView) -> str | None:
    """Lowest lead_number among online instances, self included; ties by gateway id."""
    candidates = [view.me] + [
        r.instance for r in view.peers.values() if r.state.status is PeerStatus.ONLINE
    ]
    ranked = [c for c in candidates if c.lead_number is not None]
    if not ranked:
        return None
    return min(ranked, key=lambda i: (i.lead_number, i.gateway_id)).gateway_id


def _decide_status(record: PeerRecord, last_ping_ok: bool | None, t: Thresholds) -> PeerStatus:
    state = record.state
    if last_ping_ok:
        return PeerStatus.ONLINE
    if state.missed_pings == 0:
        return state.status
    if record.tcp_reachable or (
        state.mdns_broadcasting and state.missed_pings < t.mdns_grace_misses
    ):
        return PeerStatus.UNRESPONSIVE
    if state.missed_pings >= t.offline_after_missed:
        return PeerStatus.OFFLINE
    return state.status


def _incident_for(
    record: PeerRecord, new: PeerStatus, now: datetime
) -> tuple[EventType, dict[str, Any]] | None:
    """The incident a move of the reported status to `new` deserves, if any."""
    if new not in REPORTED or new is record.reported:
        return None
    state, inst = record.state, record.instance
    details: dict[str, Any] = {"name": inst.name, "ip": inst.ip, "previous": record.reported.value}
    if new is PeerStatus.OFFLINE:
        details["missed_pings"] = state.missed_pings
        details["last_seen"] = state.last_seen.isoformat() if state.last_seen else None
        return EventType.OFFLINE, details
    if record.reported is PeerStatus.OFFLINE:
        if record.since is not None:
            details["downtime_seconds"] = round((now - record.since).total_seconds(), 1)
        return EventType.RECOVERY, details
    return EventType.ONLINE, details


class Reconciler:
    """Holds the thresholds; `apply` is a pure function of its arguments."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds

    def apply(self, view: FleetView, obs: Observation, now: datetime) -> Decision:
        decision = Decision(view)
        if isinstance(obs, PingResult):
            self._on_ping(decision, obs, now)
        elif isinstance(obs, MdnsSeen | PeerConfigured):
            self._on_announce(decision, obs.instance, isinstance(obs, MdnsSeen), now)
        elif isinstance(obs, MdnsGone):
            self._on_mdns_gone(decision, obs, now)
        if isinstance(obs, Tick):
            for flapping in [g for g, r in view.peers.items() if r.flapping]:
                self._settle_flapping(decision, flapping, now)
            decision.moved = True
        else:
            subject = _subject(obs)
            if subject is not None and subject in decision.view.peers:
                self._settle_flapping(decision, subject, now)
        if decision.moved or decision.instances:
            self._elect(decision, now)
        return decision

    # -- observations -----------------------------------------------------

    def _on_ping(self, d: Decision, obs: PingResult, now: datetime) -> None:
        record = d.view.peers.get(obs.gateway_id)
        if record is None:
            return  # a peer we no longer track; its ping is still in ping_history
        state = record.state
        if obs.success:
            state = dataclasses.replace(
                state,
                last_seen=obs.at,
                last_ping_attempt=obs.at,
                missed_pings=0,
                ssh_connectivity=True,
                claw_clan_installed=(
                    state.claw_clan_installed if obs.installed is None else obs.installed
                ),
                updated_at=now,
            )
        else:
            state = dataclasses.replace(
                state,
                last_ping_attempt=obs.at,
                missed_pings=state.missed_pings + 1,
                ssh_connectivity=False,
                updated_at=now,
            )
        tcp = bool(obs.tcp_reachable) if not obs.success else True
        record = dataclasses.replace(record, state=state, tcp_reachable=tcp)
        self._transition(d, record, _decide_status(record, obs.success, self.t), now)

    def _on_announce(self, d: Decision, inst: Instance, via_mdns: bool, now: datetime) -> None:
        if inst.gateway_id == d.view.me.gateway_id:
            return
        record = d.view.peers.get(inst.gateway_id)
        if record is None:
            state = PeerState(
                gateway_id=inst.gateway_id, mdns_broadcasting=via_mdns, updated_at=now
            )
            record = PeerRecord(inst, state, since=now)
            d.instances.append(inst)
            d.states.append(state)
            self._put(d, record)
            return
        merged = _merge_identity(record.instance, inst, now)
        if merged != record.instance:
            d.instances.append(merged)
        state = record.state
        if via_mdns and not state.mdns_broadcasting:
            state = dataclasses.replace(state, mdns_broadcasting=True, updated_at=now)
        record = dataclasses.replace(record, instance=merged, state=state)
        self._transition(d, record, _decide_status(record, None, self.t), now)

    def _on_mdns_gone(self, d: Decision, obs: MdnsGone, now: datetime) -> None:
        record = d.view.peers.get(obs.gateway_id)
        if record is None or not record.state.mdns_broadcasting:
            return
        state = dataclasses.replace(record.state, mdns_broadcasting=False, updated_at=now)
        record = dataclasses.replace(record, state=state)
        self._transition(d, record, _decide_status(record, None, self.t), now)

    # -- transitions, flapping, leadership ----------------------------------

    def _transition(self, d: Decision, record: PeerRecord, new: PeerStatus, now: datetime) -> None:
        old = record.state.status
        if new is not old:
            d.moved = True
            window = [x for x in record.transitions if now - x <= self.t.flap_window]
            if old is not PeerStatus.UNKNOWN:  # being first seen is not flapping
                window.append(now)
            record = dataclasses.replace(
                record,
                state=dataclasses.replace(record.state, status=new, updated_at=now),
                transitions=tuple(window),
            )
            if new is PeerStatus.UNRESPONSIVE:
                d.notes.append(
                    Note(
                        "peer_unresponsive",
                        record.instance.gateway_id,
                        {
                            "name": record.instance.name,
                            "missed_pings": record.state.missed_pings,
                            "mdns": record.state.mdns_broadcasting,
                            "tcp": record.tcp_reachable,
                        },
                    )
                )
            if not record.flapping and len(window) >= self.t.flap_transitions:
                record = dataclasses.replace(record, flapping=True)
                d.notes.append(
                    Note(
                        "flap_start",
                        record.instance.gateway_id,
                        {
                            "name": record.instance.name,
                            "transitions": len(window),
                            "window_seconds": int(self.t.flap_window.total_seconds()),
                        },
                    )
                )
            if not record.flapping:
                record = self._report(d, record, new, now)
            record = dataclasses.replace(record, since=now)
        previous = d.view.peers.get(record.instance.gateway_id)
        if previous is None or record.state != previous.state:
            d.states.append(record.state)
        self._put(d, record)

    def _report(
        self, d: Decision, record: PeerRecord, new: PeerStatus, now: datetime
    ) -> PeerRecord:
        found = _incident_for(record, new, now)
        if found is None:
            return record
        event, details = found
        d.incidents.append(
            Incident(
                gateway_id=record.instance.gateway_id,
                event_type=event,
                details=details,
                timestamp=now,
            )
        )
        return dataclasses.replace(record, reported=new)

    def _settle_flapping(self, d: Decision, gid: str, now: datetime) -> None:
        """End a flap once the peer held one status for a whole window."""
        record = d.view.peers[gid]
        if not record.flapping:
            return
        last = record.transitions[-1] if record.transitions else None
        if last is not None and now - last <= self.t.flap_window:
            return
        settled = dataclasses.replace(record, flapping=False, transitions=())
        fields = {"name": record.instance.name, "status": record.state.status.value}
        d.notes.append(Note("flap_stop", gid, fields))
        self._put(d, self._report(d, settled, record.state.status, now))

    def _elect(self, d: Decision, now: datetime) -> None:
        leader = elect_leader(d.view)
        if leader == d.view.leader:
            return
        d.incidents.append(
            Incident(
                gateway_id=leader or d.view.me.gateway_id,
                event_type=EventType.LEADER_CHANGE,
                details={"old": d.view.leader, "new": leader},
                timestamp=now,
            )
        )
        d.view = dataclasses.replace(d.view, leader=leader)

    @staticmethod
    def _put(d: Decision, record: PeerRecord) -> None:
        peers = dict(d.view.peers)
        peers[record.instance.gateway_id] = record
        d.view = dataclasses.replace(d.view, peers=peers)


def _subject(obs: Observation) -> str | None:
    if isinstance(obs, PingResult | MdnsGone):
        return obs.gateway_id
    if isinstance(obs, MdnsSeen | PeerConfigured):
        return obs.instance.gateway_id
    return None


def _merge_identity(old: Instance, new: Instance, now: datetime) -> Instance:
    """Take what the announcement says; keep what it leaves out."""
    merged = dataclasses.replace(
        old,
        name=new.name or old.name,
        ip=new.ip or old.ip,
        ssh_user=new.ssh_user or old.ssh_user,
        ssh_port=new.ssh_port or old.ssh_port,
        lead_number=new.lead_number if new.lead_number is not None else old.lead_number,
        version=new.version or old.version,
        github_repo=new.github_repo or old.github_repo,
    )
    if merged == old:
        return old
    return dataclasses.replace(merged, updated_at=now)
