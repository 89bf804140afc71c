"""Issue 15: each machine is probed by k observers (decide/assignment.py, decide/observing.py).

Pure: rendezvous hashing over plain ids, then the reconciler with plain values. A machine
probes its share; for the others it takes the fleet's verdict as their status, with no
incident of its own; when an observer leaves, only the targets it observed move.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

from clawd.core.lock_ids import lease_session_name
from clawd.core.model import Instance, PeerState, PeerStatus
from clawd.core.observations import PingResult, Tick, Verdict, VerdictsSeen
from clawd.decide.assignment import observers_of, probed_by
from clawd.decide.reconciler import Reconciler
from clawd.decide.view import FleetView, PeerRecord, Thresholds

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FLEET = frozenset(f"gw-{n:03d}" for n in range(100))


def test_every_machine_gets_k_observers_and_the_load_is_spread() -> None:
    load: Counter[str] = Counter()
    for target in FLEET:
        chosen = observers_of(target, FLEET, 3)
        assert len(set(chosen)) == 3 and target not in chosen
        load.update(chosen)
    # 300 assignments over 100 observers: none idle, none carrying a tenth of the fleet.
    assert sum(load.values()) == 300
    assert max(load.values()) <= 10
    assert len(load) >= 85


def test_each_machine_computes_its_own_share_the_same_way() -> None:
    for me in sorted(FLEET)[:10]:
        mine = probed_by(me, FLEET, FLEET, 3)
        assert mine == {t for t in FLEET if me in observers_of(t, FLEET, 3)}


def test_an_observer_that_leaves_moves_only_the_targets_it_observed() -> None:
    gone = "gw-042"
    rest = FLEET - {gone}
    moved = 0
    for target in rest:
        before, after = observers_of(target, FLEET, 3), observers_of(target, rest, 3)
        if gone in before:
            moved += 1
            # The other two stay; the next in rank takes the leaver's place.
            assert set(before) - {gone} < set(after) and len(after) == 3
        else:
            assert after == before
    assert moved >= 1


def peer(n: int, status: PeerStatus = PeerStatus.ONLINE) -> PeerRecord:
    inst = Instance(gateway_id=f"gw-{n:03d}", name=f"m{n}", lead_number=n, ip=f"127.0.0.{n}")
    state = PeerState(gateway_id=inst.gateway_id, status=status, updated_at=T0)
    return PeerRecord(inst, state, since=T0, verified=True, reported=status)


def fleet_view() -> FleetView:
    me = Instance(gateway_id="gw-000", name="m0", lead_number=0, ip="127.0.0.100")
    return FleetView(me=me, peers={r.instance.gateway_id: r for r in map(peer, range(1, 8))})


# Every machine of the view runs clawd on the shared database.
SESSIONS = frozenset(lease_session_name(f"gw-{n:03d}") for n in range(8))


def seen(
    verdicts: dict[str, Verdict], at: datetime, sessions: frozenset[str] = SESSIONS
) -> VerdictsSeen:
    return VerdictsSeen(at, verdicts, sessions)


def assigned(
    observers: int = 2, sessions: frozenset[str] = SESSIONS
) -> tuple[Reconciler, FleetView]:
    reconciler = Reconciler(Thresholds(observers=observers))
    return reconciler, reconciler.apply(fleet_view(), seen({}, T0, sessions), T0).view


def test_a_machine_probes_only_its_share_of_seven_peers() -> None:
    _, view = assigned(2)
    mine = {g for g in view.peers if view.probes(g)}
    expected = {t for t in view.peers if "gw-000" in observers_of(t, {"gw-000", *view.peers}, 2)}
    assert mine == expected
    assert 0 < len(mine) < len(view.peers)  # not the full mesh, not nothing


def test_full_mesh_probes_every_peer() -> None:
    _, view = assigned(0)
    assert all(view.probes(g) for g in view.peers)


def test_peers_that_do_not_run_clawd_are_probed_never_probers() -> None:
    """One clawd watching machines without it (no lease session): it probes them all."""
    _, view = assigned(2, sessions=frozenset({lease_session_name("gw-000")}))
    assert all(view.probes(g) for g in view.peers)


def test_before_the_sessions_are_read_every_peer_is_probed() -> None:
    reconciler = Reconciler(Thresholds(observers=2))
    view = reconciler.apply(fleet_view(), Tick(T0), T0).view
    assert view.assignment is None and all(view.probes(g) for g in view.peers)


def test_a_down_verdict_on_a_peer_it_does_not_probe_is_its_status_with_no_incident() -> None:
    reconciler, view = assigned(2)
    other = next(g for g in sorted(view.peers) if not view.probes(g))
    verdicts = {other: Verdict(False, T0 + timedelta(seconds=5))}
    at = T0 + timedelta(seconds=6)
    decision = reconciler.apply(view, seen(verdicts, at), at)
    record = decision.view.peers[other]
    assert record.state.status is PeerStatus.OFFLINE
    assert decision.incidents == []  # the fleet recorded the one incident
    assert [s.gateway_id for s in decision.states] == [other]  # its peer file says so
    # It left the members: the peers it observed may now be this machine's.
    assert other not in decision.view.assignment.members  # type: ignore[union-attr]


def test_a_verdict_does_not_overrule_what_this_machine_sees_of_its_own_share() -> None:
    reconciler, view = assigned(2)
    mine = next(g for g in sorted(view.peers) if view.probes(g))
    at = T0 + timedelta(seconds=6)
    decision = reconciler.apply(view, seen({mine: Verdict(False, at)}, at), at)
    assert decision.view.peers[mine].state.status is PeerStatus.ONLINE


def test_a_late_ping_of_a_peer_handed_over_changes_nothing() -> None:
    reconciler, view = assigned(2)
    other = next(g for g in sorted(view.peers) if not view.probes(g))
    at = T0 + timedelta(seconds=6)
    decision = reconciler.apply(view, PingResult(other, at, False, error="timeout"), at)
    assert decision.view.peers[other] == view.peers[other]
    assert decision.incidents == []


def test_a_peer_taken_over_starts_from_fresh_evidence_and_its_recovery_is_reported() -> None:
    """An observer went down: this machine takes over a peer the fleet calls down; its
    first answers are the one `recovery` this machine reports (the fleet's evidence)."""
    reconciler, view = assigned(1)
    members = view.assignment.members  # type: ignore[union-attr]
    # A peer whose one observer is another machine, this one next in rank.
    target, (observer, _) = next(
        (t, ranked)
        for t in sorted(view.peers)
        if (ranked := observers_of(t, members, 2))[1] == "gw-000"
    )
    assert not view.probes(target)
    # Misses from an earlier turn of probing it must not count against it now.
    stale = view.peers[target]
    stale = dataclasses.replace(stale, state=dataclasses.replace(stale.state, missed_pings=7))
    view = dataclasses.replace(view, peers={**view.peers, target: stale})
    at = T0 + timedelta(seconds=6)
    verdicts = {target: Verdict(False, T0), observer: Verdict(False, at)}
    view = reconciler.apply(view, seen(verdicts, at), at).view
    assert view.peers[target].state.status is PeerStatus.OFFLINE
    assert view.probes(target)  # taken over from the observer that went down
    assert view.peers[target].state.missed_pings == 0
    events = []
    for n in range(1, 4):
        ping_at = at + timedelta(seconds=n)
        decision = reconciler.apply(view, PingResult(target, ping_at, True, 5), ping_at)
        view = decision.view
        events += [i.event_type.value for i in decision.incidents]
    assert events == ["recovery"]
    assert view.peers[target].state.status is PeerStatus.ONLINE


def test_the_leader_also_probes_every_peer_that_runs_no_clawd() -> None:
    """The reinstall candidates: only pings tell the leader that claw-clan is missing."""
    bare = frozenset(f"gw-00{n}" for n in (5, 6, 7))
    sessions = SESSIONS - {lease_session_name(g) for g in bare}
    reconciler = Reconciler(Thresholds(observers=1))
    as_follower = reconciler.apply(fleet_view(), seen({}, T0, sessions), T0).view
    assert not all(as_follower.probes(g) for g in bare)  # 1 observer each: not all mine
    led = dataclasses.replace(fleet_view(), leader="gw-000")
    as_leader = reconciler.apply(led, seen({}, T0, sessions), T0).view
    assert all(as_leader.probes(g) for g in bare)
    assert {g for g in as_leader.peers if as_leader.probes(g)} - bare == {
        g for g in as_follower.peers if as_follower.probes(g)
    } - bare
