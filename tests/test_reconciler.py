"""The reconciler's rules, one by one, with plain values (no I/O, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clawd.core.model import EventType, Instance, PeerState, PeerStatus
from clawd.core.observations import (
    MdnsFresh,
    MdnsGone,
    MdnsSeen,
    Observation,
    PeerConfigured,
    PeerProof,
    PingResult,
    SelfChanged,
    SelfHealth,
    Started,
    Tick,
)
from clawd.core.trust import Trust
from clawd.decide.reconciler import Reconciler
from clawd.decide.suspicion import DetectorSettings
from clawd.decide.view import Decision, FleetView, Thresholds, elect_leader, initial_view


def missed(n: int) -> DetectorSettings:
    return DetectorSettings(kind="threshold", offline_after_missed=n)


T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ME = Instance(gateway_id="gw-a", name="alpha", lead_number=5)
THRESHOLDS = Thresholds(detector=missed(3))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def peer(gid: str, lead: int | None = 10) -> Instance:
    return Instance(gateway_id=gid, name=f"name-{gid}", ip="127.0.0.2", lead_number=lead)


def verified_seen(inst: Instance, when: datetime) -> MdnsSeen:
    """An announcement membership has verified over SSH (the peer's state.json names it)."""
    proof = PeerProof(Trust.KNOWN_HOSTS, "SHA256:test", inst.gateway_id, inst.lead_number)
    return MdnsSeen(inst, when, proof=proof)


class Fleet:
    """Feeds observations through the reconciler and keeps everything it decided."""

    def __init__(self, view: FleetView | None = None, thresholds: Thresholds = THRESHOLDS):
        self.view = view or FleetView(me=ME)
        self.reconciler = Reconciler(thresholds)
        self.decisions: list[Decision] = []

    def feed(self, obs: Observation, now: datetime | None = None) -> Decision:
        now = now or getattr(obs, "at", T0)
        decision = self.reconciler.apply(self.view, obs, now)
        self.view = decision.view
        self.decisions.append(decision)
        return decision

    def ping(self, gid: str, t: float, ok: bool, tcp: bool | None = False) -> Decision:
        # A legitimate peer: each answered round proves it holds its id and lead number.
        record = self.view.peers.get(gid)
        lead = record.instance.lead_number if record is not None else None
        proof = PeerProof(Trust.KNOWN_HOSTS, "SHA256:test", gid, lead) if ok else None
        return self.feed(
            PingResult(gid, at(t), ok, 3 if ok else None, tcp_reachable=tcp, proof=proof)
        )

    def answered(self, gid: str, t: float, answered: bool = True) -> Decision:
        """The peer's announcer answered (or not) the mDNS query after a failed ping."""
        return self.feed(MdnsFresh(gid, at(t), answered))

    def status(self, gid: str) -> PeerStatus:
        return self.view.peers[gid].state.status

    def events(self, gid: str | None = None) -> list[EventType]:
        return [
            i.event_type
            for d in self.decisions
            for i in d.incidents
            if gid is None or i.gateway_id == gid
        ]

    def notes(self) -> list[str]:
        return [n.event for d in self.decisions for n in d.notes]


def configured(*gids: str) -> Fleet:
    fleet = Fleet()
    for gid in gids:
        fleet.feed(PeerConfigured(peer(gid), at(0)))
    return fleet


def test_new_peer_starts_unknown_and_is_persisted() -> None:
    fleet = Fleet()
    decision = fleet.feed(PeerConfigured(peer("gw-b"), at(0)))
    assert fleet.status("gw-b") is PeerStatus.UNKNOWN
    assert [i.gateway_id for i in decision.instances] == ["gw-b"]
    assert [s.gateway_id for s in decision.states] == ["gw-b"]
    assert [i for i in decision.incidents if i.gateway_id == "gw-b"] == []


def test_first_success_brings_peer_online_with_one_incident() -> None:
    fleet = configured("gw-b")
    decision = fleet.ping("gw-b", 1, ok=True)
    assert fleet.status("gw-b") is PeerStatus.ONLINE
    (incident,) = [i for i in decision.incidents if i.event_type is EventType.ONLINE]
    assert incident.gateway_id == "gw-b" and incident.timestamp == at(1)
    state = fleet.view.peers["gw-b"].state
    assert (state.last_seen, state.missed_pings, state.ssh_connectivity) == (at(1), 0, True)
    fleet.ping("gw-b", 2, ok=True)
    assert fleet.events("gw-b") == [EventType.ONLINE]  # no repeat while it stays up


def test_misses_below_threshold_are_not_news() -> None:
    fleet = configured("gw-b")
    fleet.ping("gw-b", 1, ok=True)
    fleet.ping("gw-b", 2, ok=False)
    fleet.ping("gw-b", 3, ok=False)
    assert fleet.status("gw-b") is PeerStatus.ONLINE
    assert fleet.view.peers["gw-b"].state.missed_pings == 2
    assert fleet.view.peers["gw-b"].state.ssh_connectivity is False
    assert fleet.events("gw-b") == [EventType.ONLINE]


def test_offline_after_threshold_with_no_sign_of_life() -> None:
    fleet = configured("gw-b")
    fleet.ping("gw-b", 1, ok=True)
    for t in (2, 3, 4):
        fleet.ping("gw-b", t, ok=False)
    assert fleet.status("gw-b") is PeerStatus.OFFLINE
    assert fleet.events("gw-b") == [EventType.ONLINE, EventType.OFFLINE]
    offline = next(
        i for d in fleet.decisions for i in d.incidents if i.event_type is EventType.OFFLINE
    )
    assert offline.details["missed_pings"] == 3
    assert offline.details["last_seen"] == at(1).isoformat()
    fleet.ping("gw-b", 5, ok=False)
    assert fleet.events("gw-b").count(EventType.OFFLINE) == 1  # exactly one per transition


def test_ssh_failing_while_tcp_answers_is_unresponsive_not_offline() -> None:
    fleet = configured("gw-b")
    fleet.ping("gw-b", 1, ok=True)
    for t in range(2, 10):
        fleet.ping("gw-b", t, ok=False, tcp=True)
    assert fleet.status("gw-b") is PeerStatus.UNRESPONSIVE
    assert EventType.OFFLINE not in fleet.events()
    assert fleet.notes().count("peer_unresponsive") == 1


def test_mdns_answers_keep_a_silent_peer_unresponsive_until_it_goes() -> None:
    fleet = Fleet()
    fleet.feed(verified_seen(peer("gw-b"), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    for t in (2, 3, 4, 5):
        fleet.ping("gw-b", t, ok=False)
        fleet.answered("gw-b", t + 0.01)  # its announcer answers each round's query
    assert fleet.status("gw-b") is PeerStatus.UNRESPONSIVE
    fleet.feed(MdnsGone("gw-b", at(6)))
    assert fleet.status("gw-b") is PeerStatus.OFFLINE
    assert fleet.view.peers["gw-b"].state.mdns_broadcasting is False
    assert fleet.events("gw-b") == [EventType.ONLINE, EventType.OFFLINE]


def test_mdns_answers_alone_are_trusted_only_for_a_grace_period() -> None:
    fleet = Fleet(thresholds=Thresholds(detector=missed(3), mdns_grace_misses=6))
    fleet.feed(verified_seen(peer("gw-b"), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    for t in range(2, 7):
        fleet.ping("gw-b", t, ok=False)
        fleet.answered("gw-b", t + 0.01)
    assert fleet.status("gw-b") is PeerStatus.UNRESPONSIVE  # 5 misses, still answering mDNS
    fleet.ping("gw-b", 7, ok=False)
    assert fleet.status("gw-b") is PeerStatus.OFFLINE  # however it answers: a bounded hint
    assert fleet.events("gw-b") == [EventType.ONLINE, EventType.OFFLINE]


def test_coming_back_from_offline_is_a_recovery_with_downtime() -> None:
    fleet = configured("gw-b")
    fleet.ping("gw-b", 1, ok=True)
    for t in (2, 3, 4):
        fleet.ping("gw-b", t, ok=False)
    decision = fleet.ping("gw-b", 64, ok=True)
    assert fleet.status("gw-b") is PeerStatus.ONLINE
    (recovery,) = [i for i in decision.incidents if i.gateway_id == "gw-b"]
    assert recovery.event_type is EventType.RECOVERY
    # Issue 12 item 8: from the last successful ping (1 s), not from the verdict (4 s).
    assert recovery.details["downtime_seconds"] == 63.0
    assert recovery.details["offline_verdict_seconds"] == 60.0
    assert fleet.events("gw-b") == [EventType.ONLINE, EventType.OFFLINE, EventType.RECOVERY]


def test_back_from_unresponsive_is_not_an_incident() -> None:
    fleet = configured("gw-b")
    fleet.ping("gw-b", 1, ok=True)
    fleet.ping("gw-b", 2, ok=False, tcp=True)
    assert fleet.status("gw-b") is PeerStatus.UNRESPONSIVE
    fleet.ping("gw-b", 3, ok=True)
    assert fleet.status("gw-b") is PeerStatus.ONLINE
    assert fleet.events("gw-b") == [EventType.ONLINE]


def test_offline_then_unresponsive_then_online_is_one_recovery() -> None:
    fleet = configured("gw-b")
    fleet.ping("gw-b", 1, ok=True)
    for t in (2, 3, 4):
        fleet.ping("gw-b", t, ok=False)
    fleet.ping("gw-b", 5, ok=False, tcp=True)
    assert fleet.status("gw-b") is PeerStatus.UNRESPONSIVE
    fleet.ping("gw-b", 6, ok=True)
    assert fleet.events("gw-b") == [EventType.ONLINE, EventType.OFFLINE, EventType.RECOVERY]


def _flap(fleet: Fleet, gid: str, pings: int, t: float = 1.0) -> float:
    """Up, down, up, down ... for `pings` pings; returns the time reached."""
    for n in range(pings):
        fleet.ping(gid, t, ok=n % 2 == 0)
        t += 1
    return t


UP, DOWN, BACK = EventType.ONLINE, EventType.OFFLINE, EventType.RECOVERY
FLAPPY = Thresholds(detector=missed(1))


def test_flapping_is_reported_once_not_as_a_flood() -> None:
    fleet = configured("gw-b", "gw-c")
    fleet.reconciler = Reconciler(FLAPPY)
    fleet.ping("gw-c", 0, ok=True)
    t = _flap(fleet, "gw-b", pings=40)
    events = fleet.events("gw-b")
    # Nagios' percent state change crosses 50 % after 11 alternating results:
    # until then each change is news, afterwards one flap_start and silence.
    assert events.count(EventType.FLAP_START) == 1
    assert events.index(EventType.FLAP_START) <= 12
    assert len(events) <= 13
    assert fleet.view.peers["gw-b"].flapping
    # Steady again: the percentage decays below 25 % within the 21-result window.
    for n in range(21):
        fleet.ping("gw-b", t + n, ok=True)
    events = fleet.events("gw-b")
    assert events.count(EventType.FLAP_STOP) == 1
    assert not fleet.view.peers["gw-b"].flapping
    # It flapped into "down" last reported; it ends up: one recovery after the stop.
    last_reported = [
        e for e in events[: events.index(EventType.FLAP_STOP)] if e in (UP, DOWN, BACK)
    ][-1]
    tail = events[events.index(EventType.FLAP_STOP) + 1 :]
    assert tail == ([BACK] if last_reported is DOWN else [])
    assert fleet.events("gw-c") == [UP]  # the other peer is untouched


def test_a_peer_that_stops_and_returns_is_not_flapping() -> None:
    fleet = configured("gw-b")
    t = 1.0
    for ok in [True] * 10 + [False] * 5 + [True] * 10:
        fleet.ping("gw-b", t, ok=ok)
        t += 1
    assert fleet.events("gw-b") == [UP, DOWN, BACK]
    assert fleet.view.peers["gw-b"].flap_percent < 25


def test_leader_is_lowest_lead_number_among_online_including_self() -> None:
    fleet = Fleet()
    fleet.feed(PeerConfigured(peer("gw-b", lead=1), at(0)))
    fleet.feed(PeerConfigured(peer("gw-c", lead=9), at(0)))
    assert fleet.view.leader == "gw-a"  # self (5) while the others are unknown
    fleet.ping("gw-c", 1, ok=True)
    assert fleet.view.leader == "gw-a"  # 9 does not beat 5
    decision = fleet.ping("gw-b", 2, ok=True)
    assert fleet.view.leader == "gw-b"
    (change,) = [i for i in decision.incidents if i.event_type is EventType.LEADER_CHANGE]
    assert change.details == {"old": "gw-a", "new": "gw-b", "epoch": 2}  # each change: +1
    for t in (3, 4, 5):
        fleet.ping("gw-b", t, ok=False)
    assert fleet.view.leader == "gw-a"
    assert fleet.events().count(EventType.LEADER_CHANGE) == 3  # none->a, a->b, b->a


def test_leader_ties_break_by_gateway_id() -> None:
    view = FleetView(me=Instance("gw-m", "m", lead_number=1))
    fleet = Fleet(view)
    fleet.feed(PeerConfigured(peer("gw-b", lead=1), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    assert fleet.view.leader == "gw-b"


def test_unresponsive_peer_cannot_lead() -> None:
    fleet = Fleet()
    fleet.feed(PeerConfigured(peer("gw-b", lead=1), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    fleet.ping("gw-b", 2, ok=False, tcp=True)
    assert elect_leader(fleet.view) == "gw-a"


def test_restart_does_not_re_raise_incidents() -> None:
    state = PeerState("gw-b", status=PeerStatus.ONLINE, last_seen=at(0), updated_at=at(0))
    view = initial_view(ME, {"gw-b": peer("gw-b", lead=1), "gw-a": ME}, {"gw-b": state}, "gw-b")
    fleet = Fleet(view)
    fleet.ping("gw-b", 10, ok=True)
    assert fleet.events() == []
    assert "gw-a" not in fleet.view.peers  # self is never a peer


def test_announcement_updates_identity_without_changing_status() -> None:
    fleet = configured("gw-b")
    fleet.ping("gw-b", 1, ok=True)
    moved = Instance("gw-b", "renamed", ip="127.0.0.9", lead_number=10)
    decision = fleet.feed(verified_seen(moved, at(2)))
    (updated,) = decision.instances
    assert (updated.name, updated.ip) == ("renamed", "127.0.0.9")
    assert updated.updated_at == at(2)
    assert fleet.status("gw-b") is PeerStatus.ONLINE
    assert fleet.view.peers["gw-b"].state.mdns_broadcasting is True
    again = fleet.feed(verified_seen(moved, at(3)))
    assert again.instances == [] and again.states == []  # nothing new: nothing to write


def test_ping_for_untracked_peer_changes_nothing() -> None:
    fleet = Fleet()
    decision = fleet.ping("gw-x", 1, ok=True)
    assert decision.states == [] and decision.incidents == [] and fleet.view.peers == {}


def test_own_announcement_is_ignored() -> None:
    fleet = Fleet()
    fleet.feed(MdnsSeen(ME, at(0)))
    assert fleet.view.peers == {}


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_threshold_is_honoured(threshold: int) -> None:
    fleet = Fleet(thresholds=Thresholds(detector=missed(threshold)))
    fleet.feed(PeerConfigured(peer("gw-b"), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    for n in range(1, threshold):
        fleet.ping("gw-b", 1 + n, ok=False)
        assert fleet.status("gw-b") is PeerStatus.ONLINE
    fleet.ping("gw-b", 1 + threshold, ok=False)
    assert fleet.status("gw-b") is PeerStatus.OFFLINE


def test_installed_flag_follows_the_check_and_is_kept_between_checks() -> None:
    fleet = configured("gw-b")
    fleet.feed(PingResult("gw-b", at(1), True, 2, installed=True))
    assert fleet.view.peers["gw-b"].state.claw_clan_installed is True
    fleet.feed(PingResult("gw-b", at(2), True, 2, installed=None))
    assert fleet.view.peers["gw-b"].state.claw_clan_installed is True
    fleet.feed(PingResult("gw-b", at(3), True, 2, installed=False))
    assert fleet.view.peers["gw-b"].state.claw_clan_installed is False


def test_reconciler_does_not_mutate_its_input() -> None:
    fleet = configured("gw-b")
    before = fleet.view
    snapshot = dict(before.peers)
    fleet.reconciler.apply(before, PingResult("gw-b", at(1), True, 1), at(1))
    assert before.peers == snapshot
    assert before.peers["gw-b"].state.status is PeerStatus.UNKNOWN


# -- issue 12: start-up election, live self edits, outage length -----------------------

SETTLING = Thresholds(
    detector=missed(3), settle=timedelta(seconds=10), settle_min=timedelta(seconds=0)
)


def leader_changes(fleet: Fleet) -> list[dict[str, object]]:
    return [
        i.details
        for d in fleet.decisions
        for i in d.incidents
        if i.event_type is EventType.LEADER_CHANGE
    ]


def test_start_elects_once_after_every_better_peer_answered() -> None:
    """Issue 12 item 11: no self -> b -> c -> d storm while the peers answer one by one."""
    fleet = Fleet(thresholds=SETTLING)
    fleet.feed(Started(at(0)))
    for gid, lead in (("gw-b", 4), ("gw-c", 3), ("gw-d", 2)):
        fleet.feed(PeerConfigured(peer(gid, lead=lead), at(0)))
    assert fleet.view.leader is None
    fleet.ping("gw-b", 1, ok=True)
    fleet.ping("gw-c", 1.5, ok=True)
    assert fleet.view.leader is None  # gw-d (2) could still win
    fleet.ping("gw-d", 2, ok=True)
    assert leader_changes(fleet) == [{"old": None, "new": "gw-d", "epoch": 1}]
    assert fleet.view.settle is None


def test_start_keeps_the_stored_leader_without_an_incident() -> None:
    """Issue 12 item 11: a restart that finds the stored leader again records nothing."""
    state = PeerState("gw-b", status=PeerStatus.ONLINE, last_seen=at(0), updated_at=at(0))
    view = initial_view(ME, {"gw-b": peer("gw-b", lead=1)}, {"gw-b": state}, "gw-b")
    fleet = Fleet(view, thresholds=SETTLING)
    fleet.feed(Started(at(0)))
    fleet.feed(Tick(at(1)))
    assert fleet.view.settle is not None  # gw-b has not answered yet
    fleet.ping("gw-b", 2, ok=True)
    assert (fleet.view.leader, leader_changes(fleet)) == ("gw-b", [])
    assert fleet.view.settle is None


def test_a_restart_waits_for_the_stored_leader_beyond_the_settle_time() -> None:
    """On a busy machine the stored leader's first SSH handshake can outlast the start-up
    wait (CI: gw-d elected, then gw-e back, two leader changes for a restart that found
    the same leader). The wait holds for it until it answers or is judged offline."""
    state = PeerState("gw-b", status=PeerStatus.ONLINE, last_seen=at(0), updated_at=at(0))
    peers = {"gw-b": peer("gw-b", lead=1), "gw-c": peer("gw-c", lead=2)}
    view = initial_view(ME, peers, {"gw-b": state}, "gw-b")
    fleet = Fleet(view, thresholds=SETTLING)
    fleet.feed(Started(at(0)))
    fleet.ping("gw-c", 1, ok=True)
    fleet.feed(Tick(at(12)))  # past the settle time: gw-b neither answered nor failed
    assert fleet.view.settle is not None and fleet.view.leader == "gw-b"
    fleet.ping("gw-b", 13, ok=True)
    assert (fleet.view.leader, leader_changes(fleet)) == ("gw-b", [])


def test_a_restart_elects_another_once_the_stored_leader_is_offline() -> None:
    state = PeerState("gw-b", status=PeerStatus.ONLINE, last_seen=at(0), updated_at=at(0))
    peers = {"gw-b": peer("gw-b", lead=1), "gw-c": peer("gw-c", lead=2)}
    view = initial_view(ME, peers, {"gw-b": state}, "gw-b")
    fleet = Fleet(view, thresholds=SETTLING)
    fleet.feed(Started(at(0)))
    fleet.ping("gw-c", 1, ok=True)
    for n in range(3):  # three misses: offline
        fleet.ping("gw-b", 11 + n, ok=False)
    fleet.feed(Tick(at(14)))
    assert fleet.view.peers["gw-b"].state.status is PeerStatus.OFFLINE
    assert leader_changes(fleet) == [{"old": "gw-b", "new": "gw-c", "epoch": 1}]


def test_start_waits_no_longer_than_the_settle_time() -> None:
    fleet = Fleet(thresholds=SETTLING)
    fleet.feed(Started(at(0)))
    fleet.feed(PeerConfigured(peer("gw-b", lead=1), at(0)))
    fleet.ping("gw-b", 1, ok=False)  # a failed ping is no answer: keep waiting
    fleet.feed(Tick(at(9)))
    assert fleet.view.leader is None
    fleet.feed(Tick(at(10)))
    assert leader_changes(fleet) == [{"old": None, "new": "gw-a", "epoch": 1}]


def test_start_does_not_wait_for_peers_that_cannot_win() -> None:
    fleet = Fleet(thresholds=SETTLING)
    fleet.feed(Started(at(0)))
    fleet.feed(PeerConfigured(peer("gw-b", lead=9), at(0)))  # 9 never beats our 5
    fleet.feed(PeerConfigured(peer("gw-c", lead=None), at(0)))  # no lead number
    assert fleet.view.leader == "gw-a" and fleet.view.settle is None


def test_start_waits_at_least_the_minimum_for_mdns_finds() -> None:
    fleet = Fleet(
        thresholds=Thresholds(settle=timedelta(seconds=10), settle_min=timedelta(seconds=3))
    )
    fleet.feed(Started(at(0)))
    fleet.feed(Tick(at(1)))
    assert fleet.view.leader is None  # nobody known yet, but mDNS may find a better peer
    fleet.feed(verified_seen(peer("gw-b", lead=1), at(2)))
    fleet.ping("gw-b", 2.5, ok=True)
    fleet.feed(Tick(at(3)))
    assert leader_changes(fleet) == [{"old": None, "new": "gw-b", "epoch": 1}]


def test_a_lead_number_edit_re_elects_and_keeps_the_epoch() -> None:
    """Issue 12 item 9: the election re-runs at once; the epoch only goes up."""
    fleet = Fleet(FleetView(me=Instance("gw-a", "alpha", lead_number=0)))
    fleet.feed(PeerConfigured(peer("gw-b", lead=3), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    fleet.feed(SelfHealth(at(1.5), doubting=True))
    assert (fleet.view.leader, fleet.view.epoch) == ("gw-a", 1)
    fleet.feed(SelfChanged(Instance("gw-a", "alpha", lead_number=7), at(2)))
    assert (fleet.view.leader, fleet.view.epoch, fleet.view.doubting) == ("gw-b", 2, True)
    assert fleet.view.me.lead_number == 7
    assert leader_changes(fleet)[-1] == {"old": "gw-a", "new": "gw-b", "epoch": 2}
    fleet.feed(SelfChanged(Instance("gw-a", "alpha-renamed", lead_number=7), at(3)))
    assert (fleet.view.leader, fleet.view.epoch) == ("gw-b", 2)  # no change, no new epoch


def test_recovery_after_a_restart_counts_from_the_stored_last_seen() -> None:
    """Issue 12 item 8: the outage began before the restart, at the last successful ping."""
    state = PeerState("gw-b", status=PeerStatus.OFFLINE, last_seen=at(0), updated_at=at(30))
    view = initial_view(ME, {"gw-b": peer("gw-b")}, {"gw-b": state}, "gw-a")
    fleet = Fleet(view)
    decision = fleet.ping("gw-b", 100, ok=True)
    (recovery,) = decision.incidents
    assert recovery.event_type is EventType.RECOVERY
    assert recovery.details["downtime_seconds"] == 100.0
