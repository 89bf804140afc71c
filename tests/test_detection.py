"""Detection rules in the reconciler, with plain values: evidence fusion, recovery after M
successes, partitions, indirect probes, self-doubt, leadership epochs, `--why`."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from clawd.config.sections import DetectionSettings, PingSettings
from clawd.config.settings import Settings
from clawd.core.model import EventType, Instance, PeerStatus
from clawd.core.observations import (
    EpochSeen,
    MdnsFresh,
    MdnsGone,
    MdnsSeen,
    Observation,
    PeerConfigured,
    PeerProof,
    PingResult,
    ProbeResult,
    SelfHealth,
    Tick,
)
from clawd.core.trust import Trust
from clawd.decide.explain import explain, find_peer, render
from clawd.decide.flap import percent_state_change
from clawd.decide.from_settings import guard_settings
from clawd.decide.guard import LAG, MASS, SelfHealthGuard
from clawd.decide.reconciler import Reconciler
from clawd.decide.rules import RULES, Probes
from clawd.decide.suspicion import DetectorSettings
from clawd.decide.view import Decision, FleetView, Thresholds

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ME = Instance(gateway_id="gw-me", name="me", lead_number=5)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def threshold(n: int = 3, **kw: object) -> Thresholds:
    return Thresholds(detector=DetectorSettings(kind="threshold", offline_after_missed=n), **kw)  # type: ignore[arg-type]


class Fleet:
    def __init__(
        self, t: Thresholds, peers: int = 0, lead: int = 10, *, verified: bool = True
    ) -> None:
        self.view = FleetView(me=ME)
        self.reconciler = Reconciler(t)
        self.decisions: list[Decision] = []
        for n in range(peers):
            gid = f"gw-{n:02d}"
            self.feed(
                PeerConfigured(Instance(gid, f"peer-{n}", lead + n, f"127.0.9.{n + 1}"), at(0))
            )
            if verified:
                self.verify(gid, True)

    def verify(self, gid: str, verified: bool) -> None:
        """What the identity proof over SSH sets (not this module's concern)."""
        record = dataclasses.replace(self.view.peers[gid], verified=verified)
        self.view = dataclasses.replace(self.view, peers={**self.view.peers, gid: record})

    def feed(self, obs: Observation, now: datetime | None = None) -> Decision:
        decision = self.reconciler.apply(self.view, obs, now or getattr(obs, "at", T0))
        self.view = decision.view
        self.decisions.append(decision)
        return decision

    def ping(
        self, gid: str, t: float, ok: bool, tcp: bool = False, installed: bool | None = None
    ) -> Decision:
        return self.feed(
            PingResult(gid, at(t), ok, 2 if ok else None, tcp_reachable=tcp, installed=installed)
        )

    def status(self, gid: str) -> PeerStatus:
        return self.view.peers[gid].state.status

    def events(self, gid: str | None = None) -> list[EventType]:
        return [
            i.event_type
            for d in self.decisions
            for i in d.incidents
            if gid is None or i.gateway_id == gid
        ]

    def incidents(self, event: EventType) -> list[dict[str, object]]:
        return [i.details for d in self.decisions for i in d.incidents if i.event_type is event]


# -- evidence fusion ---------------------------------------------------------------


def test_recovery_needs_m_successes_in_a_row() -> None:
    fleet = Fleet(threshold(2, recover_after=3), peers=1)
    fleet.ping("gw-00", 1, ok=True)
    fleet.ping("gw-00", 2, ok=False)
    fleet.ping("gw-00", 3, ok=False)
    assert fleet.status("gw-00") is PeerStatus.OFFLINE
    fleet.ping("gw-00", 4, ok=True)
    fleet.ping("gw-00", 5, ok=True)
    assert fleet.status("gw-00") is PeerStatus.OFFLINE
    assert fleet.view.peers["gw-00"].rule == "recovering"
    fleet.ping("gw-00", 6, ok=False)  # the streak breaks: starts over
    fleet.ping("gw-00", 7, ok=True)
    fleet.ping("gw-00", 8, ok=True)
    assert fleet.status("gw-00") is PeerStatus.OFFLINE
    fleet.ping("gw-00", 9, ok=True)
    assert fleet.status("gw-00") is PeerStatus.ONLINE
    assert fleet.events("gw-00") == [EventType.ONLINE, EventType.OFFLINE, EventType.RECOVERY]


def verified_seen(inst: Instance, when: datetime) -> MdnsSeen:
    """An announcement membership verified over SSH (it may create a peer)."""
    proof = PeerProof(Trust.KNOWN_HOSTS, "SHA256:test", inst.gateway_id, inst.lead_number)
    return MdnsSeen(inst, when, proof=proof)


def test_mdns_withdrawn_while_ssh_fails_is_offline_at_once() -> None:
    fleet = Fleet(threshold(10))
    fleet.feed(verified_seen(Instance("gw-b", "b", 10, "127.0.9.9"), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    fleet.ping("gw-b", 2, ok=False)
    fleet.feed(MdnsFresh("gw-b", at(2.01), answered=True))
    assert fleet.status("gw-b") is PeerStatus.UNRESPONSIVE  # its announcer still answers
    fleet.feed(MdnsGone("gw-b", at(3)))
    assert fleet.status("gw-b") is PeerStatus.OFFLINE
    assert fleet.view.peers["gw-b"].rule == "mdns-gone"


def test_mdns_withdrawn_while_ssh_answers_stays_online() -> None:
    fleet = Fleet(threshold(3))
    fleet.feed(verified_seen(Instance("gw-b", "b", 10, "127.0.9.9"), at(0)))
    fleet.ping("gw-b", 1, ok=True)
    fleet.feed(MdnsGone("gw-b", at(2)))
    assert fleet.status("gw-b") is PeerStatus.ONLINE  # the machine answers; only the announcer left
    fleet.feed(MdnsSeen(Instance("gw-b", "b", 10, "127.0.9.9"), at(3)))
    fleet.ping("gw-b", 4, ok=False)
    fleet.feed(MdnsFresh("gw-b", at(4.01), answered=True))
    assert fleet.status("gw-b") is PeerStatus.UNRESPONSIVE
    assert fleet.view.peers["gw-b"].rule == "mdns-present"


def test_accrual_detects_a_steady_peer_faster_than_three_misses() -> None:
    accrual = Thresholds(detector=DetectorSettings(kind="accrual"), interval_seconds=10)
    fleet = Fleet(accrual, peers=1)
    for n in range(30):
        fleet.ping("gw-00", n * 10, ok=True)
    fleet.ping("gw-00", 305, ok=False)
    assert fleet.status("gw-00") is PeerStatus.ONLINE  # one miss is not news
    fleet.ping("gw-00", 315, ok=False)
    fleet.ping("gw-00", 325, ok=False)
    assert fleet.status("gw-00") is PeerStatus.OFFLINE
    record = fleet.view.peers["gw-00"]
    assert record.rule == "detector-offline"
    assert record.phi >= accrual.detector.phi_offline


# -- indirect probes ------------------------------------------------------------------


def _online(fleet: Fleet, gids: list[str], t: float = 1) -> None:
    for gid in gids:
        fleet.ping(gid, t, ok=True, installed=True)


def test_a_suspect_is_probed_by_online_installed_peers() -> None:
    fleet = Fleet(threshold(2, probes=3), peers=4)
    _online(fleet, ["gw-00", "gw-01", "gw-02"])
    fleet.ping("gw-03", 1, ok=True, installed=False)  # online, no claw-clan: cannot probe
    decision = fleet.ping("gw-00", 2, ok=False)
    (request,) = decision.probes
    assert request.target == "gw-00"
    assert request.helpers == ("gw-01", "gw-02")
    assert (request.host, request.port) == ("127.0.9.1", 22)
    assert fleet.view.peers["gw-00"].probes is Probes.PENDING
    assert not fleet.ping("gw-00", 3, ok=False).probes  # one round per failure streak


def test_reached_by_other_peers_is_unreachable_from_here_only() -> None:
    fleet = Fleet(threshold(2, probes=3), peers=3)
    _online(fleet, ["gw-00", "gw-01", "gw-02"])
    fleet.ping("gw-00", 2, ok=False)
    fleet.feed(ProbeResult("gw-00", at(2.5), ("gw-01", "gw-02"), ("gw-01", "gw-02"), ()))
    fleet.ping("gw-00", 3, ok=False)
    fleet.ping("gw-00", 4, ok=False)
    assert fleet.status("gw-00") is PeerStatus.UNRESPONSIVE
    assert fleet.view.peers["gw-00"].rule == "reachable-by-peers"
    assert EventType.OFFLINE not in fleet.events("gw-00")
    (details,) = fleet.incidents(EventType.UNREACHABLE)
    assert details["scope"] == "unreachable from this instance only"
    assert details["reachable_by"] == ["gw-01", "gw-02"]
    fleet.ping("gw-00", 5, ok=True)
    assert fleet.status("gw-00") is PeerStatus.ONLINE
    assert fleet.events("gw-00") == [EventType.ONLINE, EventType.UNREACHABLE]


def test_offline_waits_for_probes_then_needs_them_to_fail() -> None:
    fleet = Fleet(threshold(2, probes=3), peers=3)
    _online(fleet, ["gw-00", "gw-01", "gw-02"])
    fleet.ping("gw-00", 2, ok=False)
    fleet.ping("gw-00", 3, ok=False)
    assert fleet.status("gw-00") is PeerStatus.ONLINE
    assert fleet.view.peers["gw-00"].rule == "probing"
    fleet.feed(ProbeResult("gw-00", at(3.5), ("gw-01", "gw-02"), (), ("gw-01", "gw-02")))
    assert fleet.status("gw-00") is PeerStatus.OFFLINE
    assert fleet.view.peers["gw-00"].rule == "detector-offline"


def test_probes_that_never_answer_do_not_hold_a_peer_for_ever() -> None:
    fleet = Fleet(threshold(2, probes=3, probe_wait=timedelta(seconds=10)), peers=3)
    _online(fleet, ["gw-00", "gw-01", "gw-02"])
    fleet.ping("gw-00", 2, ok=False)
    fleet.ping("gw-00", 3, ok=False)
    fleet.feed(Tick(at(8)))
    assert fleet.status("gw-00") is PeerStatus.ONLINE
    fleet.feed(Tick(at(13)))
    assert fleet.status("gw-00") is PeerStatus.OFFLINE


# -- partitions -------------------------------------------------------------------------


def test_many_peers_dropping_together_is_one_partition_not_an_offline_storm() -> None:
    t = threshold(
        2, partition_min_peers=3, partition_fraction=0.3, partition_window=timedelta(seconds=30)
    )
    fleet = Fleet(t, peers=10)
    _online(fleet, [f"gw-{n:02d}" for n in range(10)])
    cut = [f"gw-{n:02d}" for n in range(5)]
    for round_ in range(4):
        for n, gid in enumerate(cut):
            fleet.ping(gid, 10 + round_ * 10 + n, ok=False)
        for gid in [f"gw-{n:02d}" for n in range(5, 10)]:
            fleet.ping(gid, 10 + round_ * 10 + 5, ok=True)
    assert fleet.events().count(EventType.PARTITION) == 1
    assert EventType.OFFLINE not in fleet.events()
    assert {fleet.status(g) for g in cut} == {PeerStatus.UNKNOWN}
    (details,) = fleet.incidents(EventType.PARTITION)
    assert details["peers"] == 5 and details["of"] == 10
    assert fleet.view.peers["gw-00"].rule == "partitioned"
    assert fleet.view.leader == "gw-me"
    # The partition heals: back online, no recovery storm, one partition_end.
    for n, gid in enumerate(cut):
        fleet.ping(gid, 60 + n, ok=True)
    assert {fleet.status(g) for g in cut} == {PeerStatus.ONLINE}
    assert fleet.events().count(EventType.PARTITION_END) == 1
    assert EventType.RECOVERY not in fleet.events()
    assert fleet.view.partition is None


def test_a_partition_that_heals_partly_leaves_the_rest_to_individual_verdicts() -> None:
    t = threshold(
        2, partition_min_peers=3, partition_fraction=0.3, partition_window=timedelta(seconds=30)
    )
    fleet = Fleet(t, peers=6)
    _online(fleet, [f"gw-{n:02d}" for n in range(6)])
    cut = [f"gw-{n:02d}" for n in range(4)]
    for round_ in range(3):
        for n, gid in enumerate(cut):
            fleet.ping(gid, 10 + round_ * 10 + n, ok=False)
    assert fleet.events().count(EventType.PARTITION) == 1
    fleet.ping("gw-00", 50, ok=True)
    fleet.ping("gw-01", 51, ok=True)  # 2 still down: below partitionMinPeers
    (end,) = fleet.incidents(EventType.PARTITION_END)
    assert end["back"] == 2
    assert {fleet.status(g) for g in ("gw-02", "gw-03")} == {PeerStatus.UNKNOWN}
    fleet.ping("gw-02", 52, ok=False)  # within a window of the end: still the partition's
    assert fleet.status("gw-02") is PeerStatus.UNKNOWN
    fleet.ping("gw-02", 82, ok=False)  # then judged by its own pings
    fleet.ping("gw-03", 83, ok=False)
    assert {fleet.status(g) for g in ("gw-02", "gw-03")} == {PeerStatus.OFFLINE}
    assert fleet.events("gw-02") == [EventType.ONLINE, EventType.OFFLINE]


def test_one_glitch_across_the_fleet_is_not_a_partition() -> None:
    t = threshold(3, partition_min_peers=3, partition_window=timedelta(seconds=30))
    fleet = Fleet(t, peers=6)
    _online(fleet, [f"gw-{n:02d}" for n in range(6)])
    for n in range(6):
        fleet.ping(f"gw-{n:02d}", 10 + n, ok=False)
    for n in range(6):
        fleet.ping(f"gw-{n:02d}", 20 + n, ok=True)
    assert fleet.events().count(EventType.PARTITION) == 0
    assert {fleet.status(f"gw-{n:02d}") for n in range(6)} == {PeerStatus.ONLINE}


# -- self-doubt -----------------------------------------------------------------------


def test_while_doubting_itself_clawd_holds_offline_verdicts() -> None:
    fleet = Fleet(threshold(2), peers=2)
    _online(fleet, ["gw-00", "gw-01"])
    fleet.feed(SelfHealth(at(2), True, LAG))
    for t in (3, 4, 5, 6):
        fleet.ping("gw-00", t, ok=False)
    assert fleet.status("gw-00") is PeerStatus.ONLINE
    assert fleet.view.peers["gw-00"].rule == "self-doubt"
    fleet.feed(SelfHealth(at(7), False))
    fleet.ping("gw-00", 8, ok=False)
    assert fleet.status("gw-00") is PeerStatus.OFFLINE


def test_a_gap_during_self_doubt_is_not_learned() -> None:
    fleet = Fleet(
        Thresholds(detector=DetectorSettings(kind="accrual"), interval_seconds=10), peers=1
    )
    for n in range(10):
        fleet.ping("gw-00", n * 10, ok=True)
    learned = fleet.view.peers["gw-00"].arrivals.learned
    fleet.feed(SelfHealth(at(95), True, LAG))
    fleet.ping("gw-00", 130, ok=True)
    assert fleet.view.peers["gw-00"].arrivals.learned == learned


def _guard(**kw: object) -> SelfHealthGuard:
    detection = DetectionSettings(guard_loop_lag_seconds=1.0, guard_min_peers=4, **kw)  # type: ignore[arg-type]
    ping = PingSettings(interval_seconds=1.0, timeout_seconds=0.5)
    return SelfHealthGuard(guard_settings(Settings(detection=detection, ping=ping)))


def test_guard_doubts_after_a_stall_once_and_trusts_again_after_the_hold() -> None:
    guard = _guard(guard_hold_seconds=5.0)
    guard.loop_lag(0.2, 0.0)
    assert guard.poll(0.0) is None
    guard.loop_lag(5.0, 10.0)
    change = guard.poll(10.0)
    assert change is not None and change.doubting and change.reason == LAG
    assert change.fields["lag_ms"] == 5000
    assert guard.stretch == 2.0
    guard.loop_lag(1.5, 12.0)  # still stalling: the same episode
    assert guard.poll(12.0) is None
    assert guard.poll(16.9) is None
    after = guard.poll(17.1)
    assert after is not None and not after.doubting
    assert guard.episodes == 1 and guard.stretch == 1.0


def test_guard_doubts_a_mass_failure_for_a_while_then_believes_it() -> None:
    guard = _guard(guard_hold_seconds=5.0, guard_mass_failure_fraction=0.8)
    for n in range(10):
        guard.ping(f"p{n}", True)
    for n in range(7):
        guard.ping(f"p{n}", False)
    assert guard.poll(1.0) is None  # 70 %: not "nearly every peer"
    guard.ping("p7", False)
    change = guard.poll(2.0)
    assert change is not None and change.doubting and change.reason == MASS
    end = guard.poll(7.5)
    assert end is not None and not end.doubting
    assert "partition" in str(end.fields["verdict"])
    assert guard.poll(9.0) is None  # still failing: not doubted again
    for n in range(10):
        guard.ping(f"p{n}", True)
    assert guard.poll(10.0) is None
    for n in range(9):
        guard.ping(f"p{n}", False)
    again = guard.poll(11.0)
    assert again is not None and again.doubting  # a new episode after recovery


# -- leadership epochs ----------------------------------------------------------------


def test_every_leader_change_raises_the_epoch() -> None:
    fleet = Fleet(threshold(1), peers=1, lead=1)
    fleet.feed(Tick(at(0)))
    assert (fleet.view.leader, fleet.view.epoch) == ("gw-me", 1)
    fleet.ping("gw-00", 1, ok=True)
    assert (fleet.view.leader, fleet.view.epoch) == ("gw-00", 2)
    fleet.ping("gw-00", 2, ok=False)
    assert (fleet.view.leader, fleet.view.epoch) == ("gw-me", 3)
    epochs = [d["epoch"] for d in fleet.incidents(EventType.LEADER_CHANGE)]
    assert epochs == [1, 2, 3]


def test_a_leader_fenced_by_a_worse_rival_starts_a_newer_epoch() -> None:
    fleet = Fleet(threshold(1), peers=0)
    fleet.feed(Tick(at(0)))
    assert fleet.view.epoch == 1
    fleet.feed(EpochSeen(at(1), 7, "gw-rival", 9))
    assert fleet.view.epoch == 8
    (change,) = fleet.incidents(EventType.LEADER_CHANGE)[1:]
    assert change["epoch"] == 8 and change["new"] == "gw-me"


def test_a_leader_fenced_by_a_better_ranked_leader_that_is_gone_takes_over() -> None:
    # The old leader (lead 1) fenced the peers in epoch 7 and died: we (5) lead now.
    fleet = Fleet(threshold(1), peers=0)
    fleet.feed(Tick(at(0)))
    fleet.feed(EpochSeen(at(1), 7, "gw-better", 1))
    assert fleet.view.epoch == 8
    fleet.feed(EpochSeen(at(2), 3, "gw-old", 9))  # an older epoch changes nothing
    assert fleet.view.epoch == 8


def test_a_follower_only_learns_a_higher_epoch() -> None:
    fleet = Fleet(threshold(1), peers=1, lead=1)
    fleet.ping("gw-00", 1, ok=True)  # gw-00 (lead 1) leads, not us
    assert fleet.view.leader == "gw-00"
    changes = len(fleet.incidents(EventType.LEADER_CHANGE))
    fleet.feed(EpochSeen(at(2), 7, "gw-00", 1))
    assert fleet.view.epoch == 7
    assert len(fleet.incidents(EventType.LEADER_CHANGE)) == changes


# -- flapping and --why ---------------------------------------------------------------


def test_percent_state_change_weights_recent_changes_more() -> None:
    steady = (True,) * 21
    old_change = (False,) + (True,) * 20
    new_change = (True,) * 20 + (False,)
    assert percent_state_change(steady) == 0.0
    assert percent_state_change(old_change) < percent_state_change(new_change)
    assert percent_state_change((True, False) * 10 + (True,)) == 100.0
    assert percent_state_change((True, False)) < 10  # a new peer cannot flap at once


def test_why_names_the_rule_and_the_evidence() -> None:
    fleet = Fleet(threshold(3), peers=1)
    fleet.ping("gw-00", 1, ok=True)
    fleet.ping("gw-00", 2, ok=False, tcp=True)
    record = find_peer(fleet.view, "peer-0")
    assert record is not None
    detail = explain(fleet.view, record, fleet.reconciler.t, at(2))
    assert detail["status"] == "unresponsive"
    assert detail["rule"] == "tcp-answers"
    assert detail["evidence"]["tcp_reachable"] is True
    assert detail["rules"] == [r.name for r in RULES]
    text = render(detail)
    assert "tcp-answers: SSH fails but the SSH port accepts connections" in text
    assert "1 missed in a row" in text
    assert find_peer(fleet.view, "nobody") is None
