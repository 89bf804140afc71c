"""Issue 15, "a power-off is offline within 3 intervals": mDNS evidence must be fresh.

The rule, with plain values: a peer counts as "still announcing" only when its announcer
answered a query for its own instance within the last round, never because its record
sits in the cache (for up to 75 minutes after a power-off). The protection stays: SSH
down while the announcer answers is `unresponsive`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from clawd.core.model import EventType, Instance, PeerStatus
from clawd.core.observations import (
    MdnsFresh,
    MdnsGone,
    MdnsQuery,
    MdnsSeen,
    Observation,
    PeerConfigured,
    PeerProof,
    PingResult,
)
from clawd.core.trust import Trust
from clawd.decide.explain import explain, render
from clawd.decide.reconciler import Reconciler
from clawd.decide.suspicion import DetectorSettings
from clawd.decide.view import Decision, FleetView, Thresholds

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
ME = Instance(gateway_id="gw-a", name="alpha", lead_number=5)
B = Instance(gateway_id="gw-b", name="bravo", lead_number=3, ip="127.0.0.2")
FRESH = timedelta(seconds=1.6)  # one round at 1 s pings: jitter, timeout, the query's wait


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def thresholds(grace: int = 10, offline_after: int = 3) -> Thresholds:
    return Thresholds(
        detector=DetectorSettings(kind="threshold", offline_after_missed=offline_after),
        mdns_grace_misses=grace,
        mdns_fresh=FRESH,
        interval_seconds=1.0,
    )


class Fleet:
    def __init__(self, t: Thresholds | None = None) -> None:
        self.view = FleetView(me=ME)
        self.reconciler = Reconciler(t or thresholds())
        self.decisions: list[Decision] = []

    def feed(self, obs: Observation) -> Decision:
        decision = self.reconciler.apply(self.view, obs, getattr(obs, "at", T0))
        self.view = decision.view
        self.decisions.append(decision)
        return decision

    def announced(self, t: float = 0) -> None:
        """gw-b found over mDNS, proven over SSH, online: its record is in the cache now."""
        proof = PeerProof(Trust.KNOWN_HOSTS, "SHA256:b", B.gateway_id, B.lead_number)
        self.feed(MdnsSeen(B, at(t), proof=proof))
        self.ping(t + 1, ok=True)

    def ping(self, t: float, ok: bool) -> Decision:
        proof = PeerProof(Trust.KNOWN_HOSTS, "SHA256:b", "gw-b", 3) if ok else None
        return self.feed(PingResult("gw-b", at(t), ok, 2 if ok else None, False, proof=proof))

    def answer(self, t: float, answered: bool = True) -> Decision:
        return self.feed(MdnsFresh("gw-b", at(t), answered))

    @property
    def status(self) -> PeerStatus:
        return self.view.peers["gw-b"].state.status

    @property
    def rule(self) -> str:
        return self.view.peers["gw-b"].rule

    def offline_incidents(self) -> int:
        return sum(
            1 for d in self.decisions for i in d.incidents if i.event_type is EventType.OFFLINE
        )


def test_a_record_in_the_cache_alone_keeps_no_peer_unresponsive() -> None:
    """The measured case: powered off, no goodbye; its record stays cached. Offline after
    the detector's 3 misses, not after `mdnsGraceMisses` (10). Fails on main: the cached
    record kept it `unresponsive` (rule mdns-present) for 10 misses."""
    fleet = Fleet()
    fleet.announced()
    assert fleet.view.peers["gw-b"].state.mdns_broadcasting is True  # still in the cache
    for t in (2, 3):
        fleet.ping(t, ok=False)
        assert fleet.status is PeerStatus.ONLINE  # a miss or two is not news
    fleet.ping(4, ok=False)
    assert fleet.status is PeerStatus.OFFLINE
    assert fleet.rule == "detector-offline"
    assert fleet.offline_incidents() == 1


def test_an_unanswered_query_is_not_announcing_whatever_the_cache_holds() -> None:
    fleet = Fleet()
    fleet.announced()
    for t in (2, 3, 4):
        fleet.ping(t, ok=False)
        fleet.answer(t + 0.5, answered=False)
    assert fleet.status is PeerStatus.OFFLINE
    assert fleet.view.peers["gw-b"].state.mdns_broadcasting is True  # the cache says yes


def test_ssh_down_while_the_announcer_answers_stays_unresponsive() -> None:
    """The protection kept: the machine is up (its announcer answers), only SSH is down."""
    fleet = Fleet()
    fleet.announced()
    seen = []
    for t in range(2, 11):  # 9 misses, below the grace of 10
        fleet.ping(t, ok=False)
        seen.append(fleet.status)
        fleet.answer(t + 0.01)
        seen.append(fleet.status)
    assert seen[0] is PeerStatus.ONLINE  # the first miss: not asked yet, not news either
    assert set(seen[1:]) == {PeerStatus.UNRESPONSIVE}
    assert fleet.rule == "mdns-present"
    assert fleet.offline_incidents() == 0


def test_the_first_unanswered_query_ends_the_protection() -> None:
    """A machine that was up with SSH down, then lost power: offline at the first round its
    announcer stays silent (the detector had long decided), not 10 misses later."""
    fleet = Fleet()
    fleet.announced()
    for t in (2, 3, 4, 5):
        fleet.ping(t, ok=False)
        fleet.answer(t + 0.01)
    assert fleet.status is PeerStatus.UNRESPONSIVE
    fleet.ping(6, ok=False)
    assert fleet.status is PeerStatus.UNRESPONSIVE  # the last round's answer still counts
    fleet.answer(6.5, answered=False)  # the power went: nobody answers
    assert fleet.status is PeerStatus.OFFLINE
    assert fleet.rule == "detector-offline"


def test_an_answer_older_than_one_round_no_longer_counts() -> None:
    fleet = Fleet()
    fleet.announced()
    fleet.ping(2, ok=False)
    fleet.answer(2.01)
    fleet.ping(3, ok=False)
    assert fleet.status is PeerStatus.UNRESPONSIVE  # 0.99 s old: this round's
    fleet.ping(5, ok=False)  # its query got lost (no answer, no verdict): 2.99 s old
    assert fleet.status is PeerStatus.OFFLINE


def test_a_successful_ping_forgets_the_answer() -> None:
    """An answer from an earlier failure streak is not this streak's evidence."""
    fleet = Fleet(thresholds(offline_after=2))
    fleet.announced()
    fleet.ping(2, ok=False)
    fleet.answer(2.01)
    fleet.ping(2.5, ok=True)
    assert fleet.view.peers["gw-b"].mdns_answered_at is None
    fleet.ping(3, ok=False)
    fleet.ping(3.5, ok=False)  # 1.49 s after that answer: fresh by age, yet not this streak's
    assert fleet.status is PeerStatus.OFFLINE


def test_each_failed_ping_of_an_announced_peer_asks_once() -> None:
    fleet = Fleet()
    fleet.announced()
    assert fleet.ping(2, ok=True).mdns_queries == []  # answering SSH: nothing to ask
    assert fleet.ping(3, ok=False).mdns_queries == [MdnsQuery("gw-b", "127.0.0.2")]
    assert fleet.ping(4, ok=False).mdns_queries == [MdnsQuery("gw-b", "127.0.0.2")]
    fleet.feed(MdnsGone("gw-b", at(4.5)))  # withdrawn: offline at once, nobody to ask
    assert fleet.status is PeerStatus.OFFLINE
    assert fleet.ping(5, ok=False).mdns_queries == []


def test_a_peer_never_announced_is_not_asked() -> None:
    fleet = Fleet()
    fleet.feed(PeerConfigured(B, at(0)))  # static, no mDNS
    fleet.ping(1, ok=True)
    assert fleet.ping(2, ok=False).mdns_queries == []


def test_why_says_the_record_is_only_in_the_cache() -> None:
    fleet = Fleet()
    fleet.announced()
    fleet.ping(2, ok=False)
    fleet.answer(2.5, answered=False)
    record = fleet.view.peers["gw-b"]
    detail = explain(fleet.view, record, fleet.reconciler.t, at(2.6))
    assert detail["evidence"]["mdns"] is False and detail["evidence"]["mdns_cached"] is True
    assert "in the cache only: no answer to a query for its instance" in render(detail)
    fleet.ping(3, ok=False)
    fleet.answer(3.01)
    detail = explain(fleet.view, fleet.view.peers["gw-b"], fleet.reconciler.t, at(3.51))
    assert detail["rule"] == "mdns-present"
    assert "answered a query for its instance 0.5 s ago" in render(detail)
