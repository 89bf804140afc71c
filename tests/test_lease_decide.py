"""Issue 15: with backend postgres the view adopts the leader lease (decide/lease.py).

Pure: the reconciler with plain values. The lease's leader and epoch replace the view's
own election; only the instance that took an epoch records its leader_change, the others
note it; only the holder of the lock acts; back on JSON the own election runs again.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from clawd.act.fleetops.leadership import acting_leader
from clawd.core.model import EventType, Instance, PeerState, PeerStatus
from clawd.core.observations import EpochSeen, LeaseSeen, PingResult
from clawd.decide.reconciler import Reconciler
from clawd.decide.view import FleetView, Lease, PeerRecord, Thresholds
from clawd.keep.lease import wants_lead

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ME = Instance(gateway_id="gw-me", name="me", lead_number=2, ip="127.0.0.1")
BETTER = Instance(gateway_id="gw-best", name="best", lead_number=1, ip="127.0.0.2")


def leased_view(**changes: object) -> FleetView:
    view = FleetView(me=ME, lease=Lease())
    return dataclasses.replace(view, **changes)  # type: ignore[arg-type]


def online(inst: Instance) -> PeerRecord:
    state = PeerState(gateway_id=inst.gateway_id, status=PeerStatus.ONLINE, updated_at=T0)
    return PeerRecord(inst, state, since=T0, verified=True, reported=PeerStatus.ONLINE)


def test_the_holder_that_took_an_epoch_records_the_one_leader_change() -> None:
    decision = Reconciler(Thresholds()).apply(
        leased_view(), LeaseSeen(T0, "gw-me", 7, held=True, new=True), T0
    )
    assert (decision.view.leader, decision.view.epoch) == ("gw-me", 7)
    assert [i.event_type for i in decision.incidents] == [EventType.LEADER_CHANGE]
    assert decision.incidents[0].details == {"old": None, "new": "gw-me", "epoch": 7}
    assert acting_leader(decision.view)


def test_the_same_leader_in_a_new_epoch_is_a_note_not_a_leader_change() -> None:
    """A fleet moving from JSON to the lease: its leader takes the lease in a new epoch
    (past the fenced one); the leader did not change, so no row says it did."""
    view = leased_view(leader="gw-me", epoch=1)
    decision = Reconciler(Thresholds()).apply(
        view, LeaseSeen(T0, "gw-me", 2, held=True, new=True), T0
    )
    assert (decision.view.leader, decision.view.epoch) == ("gw-me", 2)
    assert decision.incidents == []
    assert [(n.event, dict(n.fields)) for n in decision.notes] == [
        ("leader_epoch_raised", {"old": "gw-me", "new": "gw-me", "epoch": 2})
    ]
    assert acting_leader(decision.view)


def test_an_instance_that_only_reads_the_lease_adopts_it_as_a_note_not_an_incident() -> None:
    view = leased_view(leader="gw-old", epoch=3)
    decision = Reconciler(Thresholds()).apply(view, LeaseSeen(T0, "gw-best", 4, held=False), T0)
    assert (decision.view.leader, decision.view.epoch) == ("gw-best", 4)
    assert decision.incidents == []
    assert [(n.event, dict(n.fields)) for n in decision.notes] == [
        ("leader_adopted", {"old": "gw-old", "new": "gw-best", "epoch": 4})
    ]


def test_the_own_election_does_not_move_leader_or_epoch_under_the_lease() -> None:
    """A better peer comes online: on JSON that is a new leader and epoch at once; under
    the lease the view waits for the lease (its holder takes the next epoch)."""
    view = leased_view(leader="gw-me", epoch=5, lease=Lease("gw-me", 5, held=True), peers={})
    record = dataclasses.replace(online(BETTER), reported=PeerStatus.UNKNOWN)
    record = dataclasses.replace(
        record, state=dataclasses.replace(record.state, status=PeerStatus.UNKNOWN)
    )
    view = dataclasses.replace(view, peers={BETTER.gateway_id: record})
    ping = PingResult(BETTER.gateway_id, T0 + timedelta(seconds=1), success=True)
    decision = Reconciler(Thresholds()).apply(view, ping, T0 + timedelta(seconds=1))
    assert decision.view.peers[BETTER.gateway_id].state.status is PeerStatus.ONLINE
    assert (decision.view.leader, decision.view.epoch) == ("gw-me", 5)
    assert not [i for i in decision.incidents if i.event_type is EventType.LEADER_CHANGE]
    assert not wants_lead(decision.view)  # so the lease component lets go of the lock
    assert not acting_leader(decision.view)  # a better verified peer is up
    # The same on JSON: the view elects on its own.
    json_view = dataclasses.replace(view, lease=None)
    decision = Reconciler(Thresholds()).apply(json_view, ping, T0 + timedelta(seconds=1))
    assert (decision.view.leader, decision.view.epoch) == ("gw-best", 6)


def test_losing_the_lock_stops_acting_with_leader_and_epoch_kept() -> None:
    view = leased_view(leader="gw-me", epoch=5, lease=Lease("gw-me", 5, held=True))
    assert acting_leader(view)
    decision = Reconciler(Thresholds()).apply(view, LeaseSeen(T0, "gw-me", 5, held=False), T0)
    assert (decision.view.leader, decision.view.epoch) == ("gw-me", 5)
    assert decision.incidents == [] and decision.notes == []
    assert decision.moved  # leader work hears it at once
    assert not acting_leader(decision.view)


def test_a_fence_epoch_sets_the_floor_and_never_raises_the_epoch_itself() -> None:
    view = leased_view(leader="gw-me", epoch=5, lease=Lease("gw-me", 5, held=True))
    decision = Reconciler(Thresholds()).apply(view, EpochSeen(T0, 9, "gw-x", 1, "gw-p"), T0)
    assert decision.view.epoch == 5
    assert decision.view.lease == Lease("gw-me", 5, held=True, floor=9)
    assert decision.incidents == []


def test_back_on_json_the_own_election_decides_again() -> None:
    view = leased_view(leader="gw-best", epoch=5, lease=Lease("gw-best", 5, held=False), peers={})
    decision = Reconciler(Thresholds()).apply(
        view, LeaseSeen(T0, None, 0, held=False, active=False), T0
    )
    assert decision.view.lease is None
    assert (decision.view.leader, decision.view.epoch) == ("gw-me", 6)
