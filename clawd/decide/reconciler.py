"""The pure state machine: (fleet view, observation, now) -> (new view, what to record).

No I/O and no clock reads: every rule here is unit-tested with plain values.

Per peer, each observation updates the evidence (ping results, heartbeat history, TCP,
mDNS, indirect probes) and :func:`clawd.decide.rules.decide` turns it into a status
through the documented rule table. Around that:

- Incidents mark changes between up and down, once per transition: `offline`, `online`
  (first seen, or back from unresponsive/unknown), `recovery` (back from offline, after
  `recover_after` successful pings in a row), `unreachable` (down from here only: other
  peers reach it).
- Flapping (Nagios' percent state change over the last 21 results): one `flap_start` and
  one `flap_stop`; up/down incidents are held meanwhile, and on `flap_stop` one incident
  if the peer ended somewhere else than it was last reported.
- Partition: when many peers start failing within one window, one `partition` incident,
  those peers `unknown` (not N `offline`); `partition_end` when fewer than
  `partition_min_peers` of them are still down — those are judged one by one from their
  next ping.
- Leader: the online instance (self included) with the lowest lead_number; every change
  raises the epoch (a Lamport clock, also raised past any higher epoch a peer's fence
  holds) that fences a stale leader's actions off on the peers. At start the election
  waits for the known peers' first ping results (bounded), then runs once against the
  stored leader; a live edit of this instance's lead number re-runs it at once. With
  backend postgres the leader lease decides leader and epoch instead (decide/lease.py).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from clawd.core.model import EventType, Incident, Instance, PeerState, PeerStatus
from clawd.core.observations import (
    EpochSeen,
    LeaseSeen,
    MdnsFresh,
    MdnsGone,
    MdnsSeen,
    Observation,
    PeerConfigured,
    PeerForgotten,
    PeerProof,
    PingResult,
    ProbeRequest,
    ProbeResult,
    SelfChanged,
    SelfHealth,
    Started,
    Tick,
    VerdictsSeen,
)
from clawd.decide import partition
from clawd.decide.accrual import record_heartbeat
from clawd.decide.election import elect, epoch_seen
from clawd.decide.flap import flapping_now, percent_state_change, remember
from clawd.decide.forget import forget
from clawd.decide.lease import lease_seen
from clawd.decide.mdns_fresh import ask, take_answer
from clawd.decide.observing import reassign, verdicts_seen
from clawd.decide.proof import apply_proof, hint_lead_differs, merge_identity
from clawd.decide.rhythm import rhythm_learnable
from clawd.decide.rules import Probes, decide
from clawd.decide.suspicion import Suspicion, suspicion
from clawd.decide.transitions import report, transition
from clawd.decide.view import (
    Decision,
    FleetView,
    PeerRecord,
    Settle,
    Thresholds,
    evidence,
)

# A restart waits for the leader its store had for up to this many start-up waits, as
# long as that leader has neither answered nor been judged offline (view.Settle).
LEADER_WAIT_SETTLES = 10


class Reconciler:
    """Holds the thresholds; `apply` is a pure function of its arguments."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds

    def apply(self, view: FleetView, obs: Observation, now: datetime) -> Decision:
        decision = Decision(view, origin=view.peers)
        if isinstance(obs, PingResult):
            self._on_ping(decision, obs, now)
        elif isinstance(obs, MdnsSeen):
            self._on_mdns(decision, obs, now)
        elif isinstance(obs, PeerConfigured):
            self._on_announce(decision, obs.instance, False, now, static=True)
        elif isinstance(obs, MdnsGone):
            self._on_mdns_gone(decision, obs, now)
        elif isinstance(obs, MdnsFresh):
            if take_answer(decision, obs):
                self._redecide(decision, obs.gateway_id, now)
        elif isinstance(obs, ProbeResult):
            self._on_probe(decision, obs, now)
        elif isinstance(obs, SelfHealth):
            if obs.doubting != view.doubting:
                decision.view = dataclasses.replace(view, doubting=obs.doubting)
        elif isinstance(obs, EpochSeen):
            epoch_seen(decision, obs, now)
        elif isinstance(obs, LeaseSeen):
            lease_seen(decision, obs, now)
        elif isinstance(obs, VerdictsSeen):
            verdicts_seen(decision, obs, now)
        elif isinstance(obs, SelfChanged):
            self._on_self(decision, obs)
        elif isinstance(obs, Started):
            self._on_start(decision, obs)
        elif isinstance(obs, Tick):
            self._on_tick(decision, now)
            decision.moved = True
        elif isinstance(obs, PeerForgotten):
            forget(decision, obs)
        # While the start-up election waits, every later observation may be the one it
        # ends on (not Started itself: the static peers are still queued behind it).
        settling = decision.view.settle is not None and not isinstance(obs, Started)
        if self.t.observers > 0 and (decision.moved or decision.instances):
            reassign(decision, self.t.observers, now)
        elif self.t.observers == 0 and view.assignment is not None:  # a reload: full mesh
            decision.view = dataclasses.replace(decision.view, assignment=None, probed=frozenset())
            decision.moved = True
        if decision.moved or decision.instances or settling:
            elect(decision, now)
        return decision

    # -- observations -----------------------------------------------------

    def _on_ping(self, d: Decision, obs: PingResult, now: datetime) -> None:
        record = d.view.peers.get(obs.gateway_id)
        if record is None or not d.view.probes(obs.gateway_id):
            # A peer we no longer track, or one handed to other observers (its last round
            # was under way): the ping is still in ping_history.
            return
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
            record = dataclasses.replace(
                record,
                state=state,
                tcp_reachable=True,
                arrivals=record_heartbeat(
                    record.arrivals,
                    obs.at,
                    window=self.t.detector.window,
                    learn=rhythm_learnable(d.view, record),
                ),
                results=remember(record.results, True),
                ok_streak=record.ok_streak + 1,
                failing_since=None,
                probes=Probes.NONE,
                probes_at=None,
                reachable_by=(),
                unreachable_reported=False,
                mdns_answered_at=None,  # a new failure streak asks afresh
            )
        else:
            state = dataclasses.replace(
                state,
                last_ping_attempt=obs.at,
                missed_pings=state.missed_pings + 1,
                ssh_connectivity=False,
                updated_at=now,
            )
            record = dataclasses.replace(
                record,
                state=state,
                tcp_reachable=bool(obs.tcp_reachable),
                results=remember(record.results, False),
                ok_streak=0,
                failing_since=record.failing_since or obs.at,
            )
            ask(d, record)
        if obs.success:
            record = apply_proof(d, record, obs.proof)
        hold = record.partition_hold_until
        if hold is not None and (obs.success or obs.at > hold):
            record = dataclasses.replace(record, partition_hold_until=None)
        record = self._suspect(record, now)
        record = self._flap(d, record, now)
        d.put(record)
        gid = record.instance.gateway_id
        settle = d.view.settle
        # Heard = answered with its identity read (a round whose read timed out proves
        # nothing yet: the election waits for the next one, bounded by the settle time).
        heard = obs.success and (obs.proof is not None or record.verified)
        if settle is not None and heard and gid in settle.unheard:
            d.view = dataclasses.replace(
                d.view, settle=dataclasses.replace(settle, unheard=settle.unheard - {gid})
            )
            d.moved = True  # perhaps the last one the start-up election waited for
        if obs.success:
            partition.leave(d, gid, now, self.t)
        elif record.suspicion is not Suspicion.NONE and not d.view.doubting:
            # A partition is judged when a peer would go offline, never on a first miss:
            # one glitch across the fleet is not a partition.
            # A shared record judges partitions across the fleet's observers instead.
            if record.suspicion is Suspicion.OFFLINE and not self.t.shared_record:
                for member in partition.open_or_join(d, gid, now, self.t):
                    self._redecide(d, member, now)
            self._maybe_probe(d, gid, now)
        self._redecide(d, gid, now)

    def _on_mdns(self, d: Decision, obs: MdnsSeen, now: datetime) -> None:
        """An announcement with a proof (membership verified it) is taken whole; one without
        is a hint: never a new peer, never a new address, user or lead number."""
        inst, proof = obs.instance, obs.proof
        record = d.view.peers.get(inst.gateway_id)
        if proof is not None and proof.proves(inst.gateway_id):
            self._on_announce(d, inst, True, now, proof)
            return
        if record is None or inst.gateway_id == d.view.me.gateway_id:
            return
        if hint_lead_differs(record, inst.lead_number):
            d.rechecks.append(inst.gateway_id)
        old = record.instance
        hint = dataclasses.replace(
            inst,
            ip=old.ip,
            ssh_user=old.ssh_user,
            ssh_port=old.ssh_port,
            lead_number=old.lead_number,
        )
        self._on_announce(d, hint, True, now)

    def _on_announce(
        self,
        d: Decision,
        inst: Instance,
        via_mdns: bool,
        now: datetime,
        proof: PeerProof | None = None,
        static: bool = False,
    ) -> None:
        if inst.gateway_id == d.view.me.gateway_id:
            return
        if proof is not None and proof.lead_number is not None:
            inst = dataclasses.replace(inst, lead_number=proof.lead_number)
        record = d.view.peers.get(inst.gateway_id)
        if record is None:
            state = PeerState(
                gateway_id=inst.gateway_id, mdns_broadcasting=via_mdns, updated_at=now
            )
            record = PeerRecord(inst, state, since=now, static=static)
            if proof is not None:
                record = dataclasses.replace(record, verified=True, trust=proof.trust)
            d.instances.append(inst)
            d.save_state(state)
            d.put(record)
            settle = d.view.settle
            if settle is not None and inst.ip:  # found during the start-up wait: wait for it
                d.view = dataclasses.replace(
                    d.view,
                    settle=dataclasses.replace(settle, unheard=settle.unheard | {inst.gateway_id}),
                )
            return
        merged = merge_identity(record.instance, inst, now)
        if merged != record.instance:
            d.instances.append(merged)
        state = record.state
        if via_mdns and not state.mdns_broadcasting:
            state = dataclasses.replace(state, mdns_broadcasting=True, updated_at=now)
        record = dataclasses.replace(
            record,
            instance=merged,
            state=state,
            mdns_withdrawn=record.mdns_withdrawn and not via_mdns,
            static=record.static or static,
        )
        if proof is not None and not (record.verified and record.trust is proof.trust):
            record = dataclasses.replace(record, verified=True, trust=proof.trust)
            d.moved = True
        d.put(record)
        self._redecide(d, inst.gateway_id, now)

    def _on_mdns_gone(self, d: Decision, obs: MdnsGone, now: datetime) -> None:
        record = d.view.peers.get(obs.gateway_id)
        if record is None or not record.state.mdns_broadcasting:
            return
        state = dataclasses.replace(record.state, mdns_broadcasting=False, updated_at=now)
        d.put(dataclasses.replace(record, state=state, mdns_withdrawn=True))
        self._redecide(d, obs.gateway_id, now)

    def _on_probe(self, d: Decision, obs: ProbeResult, now: datetime) -> None:
        record = d.view.peers.get(obs.gateway_id)
        if record is None or record.probes is not Probes.PENDING:
            return  # answered since (a ping succeeded), or a peer no longer tracked
        if obs.reached_by_majority:  # one helper (perhaps a liar) is not enough
            verdict = Probes.REACHABLE
        elif obs.unreachable_by:
            verdict = Probes.UNREACHABLE
        else:
            verdict = Probes.FAILED
        d.put(dataclasses.replace(record, probes=verdict, reachable_by=obs.reachable_by))
        if verdict is Probes.REACHABLE:
            partition.reached_by_peers(d, obs.gateway_id)
        self._redecide(d, obs.gateway_id, now)

    def _on_self(self, d: Decision, obs: SelfChanged) -> None:
        # Only who we are changes: epoch, self-doubt and partition stay (an epoch that
        # went back would let a stale leader's actions through the peers' fences).
        me = obs.instance
        peers = d.view.peers
        if me.gateway_id in peers:  # self is never a peer
            peers = {g: r for g, r in peers.items() if g != me.gateway_id}
        d.view = dataclasses.replace(d.view, me=me, peers=peers)
        d.moved = True

    def _on_start(self, d: Decision, obs: Started) -> None:
        if self.t.settle <= timedelta(0):
            d.moved = True
            return
        # No election now: static peers and mDNS finds are still on their way in.
        unheard = frozenset(g for g, r in d.view.peers.items() if r.instance.ip)
        settle = Settle(
            obs.at + self.t.settle_min,
            obs.at + self.t.settle,
            unheard,
            stored_leader=d.view.leader,
            leader_until=obs.at + LEADER_WAIT_SETTLES * self.t.settle,
        )
        d.view = dataclasses.replace(d.view, settle=settle)

    def _on_tick(self, d: Decision, now: datetime) -> None:
        # Probes that never answered must not hold a peer for ever.
        for gid, record in d.view.peers.items():
            if (
                record.probes is Probes.PENDING
                and record.probes_at is not None
                and now - record.probes_at > self.t.probe_wait
            ):
                d.put(dataclasses.replace(record, probes=Probes.FAILED))
                self._redecide(d, gid, now)

    # -- evidence ---------------------------------------------------------------

    def _suspect(self, record: PeerRecord, now: datetime) -> PeerRecord:
        missed = record.state.missed_pings
        level, phi = suspicion(
            self.t.detector, record.arrivals, missed, now, self.t.interval_seconds
        )
        if level is Suspicion.OFFLINE and missed < min(2, self.t.detector.offline_after_missed):
            # One lost ping is never proof, however regular the peer was: with a short
            # interval, phi passes any threshold by the first timeout.
            level = Suspicion.SUSPECT
        return dataclasses.replace(record, suspicion=level, phi=phi)

    def _flap(self, d: Decision, record: PeerRecord, now: datetime) -> PeerRecord:
        percent = percent_state_change(record.results)
        flapping = flapping_now(record.flapping, percent, self.t.flap_high, self.t.flap_low)
        record = dataclasses.replace(record, flap_percent=percent)
        if flapping == record.flapping:
            return record
        inst = record.instance
        details: dict[str, Any] = {
            "name": inst.name,
            "ip": inst.ip,
            "percent_state_change": round(percent, 1),
            "status": record.state.status.value,
        }
        event = EventType.FLAP_START if flapping else EventType.FLAP_STOP
        d.incidents.append(Incident(inst.gateway_id, event, details, timestamp=now))
        record = dataclasses.replace(record, flapping=flapping)
        if not flapping:  # the up/down incident held while it flapped, if it ends elsewhere
            record = report(d, record, record.state.status, now)
        return record

    def _maybe_probe(self, d: Decision, gid: str, now: datetime) -> None:
        record = d.view.peers[gid]
        if self.t.probes <= 0 or record.probes is not Probes.NONE or not record.instance.ip:
            return
        if not record.verified:
            return  # its address may be only an announcement's: never send helpers there
        helpers = tuple(
            sorted(
                h
                for h, r in d.view.peers.items()
                if h != gid
                and r.verified  # an unverified peer's answer proves nothing
                and d.view.probes(h)  # this machine holds a connection to it
                and r.state.status is PeerStatus.ONLINE
                and r.state.claw_clan_installed
                and r.state.missed_pings == 0
            )
        )
        if not helpers:
            return
        d.probes.append(ProbeRequest(gid, record.instance.ip, record.instance.ssh_port, helpers))
        d.put(dataclasses.replace(record, probes=Probes.PENDING, probes_at=now))

    # -- status ---------------------------------------------------------------------

    def _redecide(self, d: Decision, gid: str, now: datetime) -> None:
        if not d.view.probes(gid):
            return  # its status is the fleet's verdict (decide/observing.py)
        record = d.view.peers[gid]
        new, rule = decide(evidence(d.view, record, self.t, now))
        if rule.name != record.rule:
            record = dataclasses.replace(record, rule=rule.name)
        transition(d, record, new, now)
