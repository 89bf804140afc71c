"""Indirect probes and trust, with plain values (issue 14 case 6): only verified peers are
asked, only verified peers are probed, and one helper cannot overturn an `offline` verdict."""

from __future__ import annotations

import pytest
from test_detection import Fleet, _online, at, threshold

from clawd.core.model import EventType, PeerStatus
from clawd.core.observations import ProbeResult, majority
from clawd.decide.rules import Probes


def _suspect(fleet: Fleet, gid: str = "gw-00") -> tuple[str, ...]:
    """Two failed pings (offline by threshold 2): the helpers the reconciler asked."""
    (request,) = fleet.ping(gid, 2, ok=False).probes
    fleet.ping(gid, 3, ok=False)
    assert fleet.status(gid) is PeerStatus.ONLINE and fleet.view.peers[gid].rule == "probing"
    return request.helpers


@pytest.mark.parametrize(
    ("reached", "unreached"),
    [
        (("evil",), ("gw-01", "gw-02")),  # one liar among three: outvoted
        (("evil",), ("gw-01",)),  # one liar among two: a tie is not a majority
        (("evil",), ()),  # one liar, the others could not probe: no majority either
    ],
    ids=["1-of-3", "1-of-2", "1-and-errors"],
)
def test_one_helper_claiming_reachable_cannot_overturn_offline(
    reached: tuple[str, ...], unreached: tuple[str, ...]
) -> None:
    fleet = Fleet(threshold(2, probes=3), peers=4)
    _online(fleet, ["gw-00", "gw-01", "gw-02", "gw-03"])
    _suspect(fleet)
    asked = ("evil", "gw-01", "gw-02")[: max(2, len(reached) + len(unreached))]
    fleet.feed(ProbeResult("gw-00", at(3.5), asked, reached, unreached))

    assert fleet.status("gw-00") is PeerStatus.OFFLINE
    assert fleet.view.peers["gw-00"].rule == "detector-offline"
    assert fleet.view.peers["gw-00"].probes is not Probes.REACHABLE
    assert fleet.events("gw-00") == [EventType.ONLINE, EventType.OFFLINE]
    assert fleet.incidents(EventType.UNREACHABLE) == []


def test_a_majority_of_helpers_still_overturns_offline() -> None:
    fleet = Fleet(threshold(2, probes=3), peers=4)
    _online(fleet, ["gw-00", "gw-01", "gw-02", "gw-03"])
    _suspect(fleet)
    asked = ("gw-01", "gw-02", "gw-03")
    fleet.feed(ProbeResult("gw-00", at(3.5), asked, ("gw-01", "gw-03"), ("gw-02",)))
    assert fleet.status("gw-00") is PeerStatus.UNRESPONSIVE
    assert fleet.view.peers["gw-00"].rule == "reachable-by-peers"
    (details,) = fleet.incidents(EventType.UNREACHABLE)
    assert details["reachable_by"] == ["gw-01", "gw-03"]


def test_majority_is_strictly_more_than_half() -> None:
    assert [majority(v, 3) for v in range(4)] == [False, False, True, True]
    assert [majority(v, 2) for v in range(3)] == [False, False, True]
    assert not majority(0, 0)


def test_unverified_peers_are_never_asked() -> None:
    fleet = Fleet(threshold(2, probes=3), peers=5)
    _online(fleet, ["gw-00", "gw-01", "gw-02", "gw-03", "gw-04"])
    fleet.verify("gw-03", False)  # online, installed, answering: but never proved itself
    fleet.verify("gw-04", False)
    assert _suspect(fleet) == ("gw-01", "gw-02")


def test_no_probe_when_only_unverified_peers_could_help() -> None:
    fleet = Fleet(threshold(2, probes=3), peers=3, verified=False)
    fleet.verify("gw-00", True)
    _online(fleet, ["gw-00", "gw-01", "gw-02"])
    assert fleet.ping("gw-00", 2, ok=False).probes == []
    fleet.ping("gw-00", 3, ok=False)
    assert fleet.status("gw-00") is PeerStatus.OFFLINE  # no helper: not held by "probing"


def test_an_unverified_peer_is_never_probed() -> None:
    # Its address may come only from an announcement: helpers must not be sent there
    # (issue 14: 2,925 probes of an attacker's address from one peer).
    fleet = Fleet(threshold(2, probes=3), peers=3)
    _online(fleet, ["gw-00", "gw-01", "gw-02"])
    fleet.verify("gw-00", False)
    assert fleet.ping("gw-00", 2, ok=False).probes == []
    assert fleet.view.peers["gw-00"].probes is Probes.NONE
    fleet.ping("gw-00", 3, ok=False)
    assert fleet.status("gw-00") is PeerStatus.OFFLINE
