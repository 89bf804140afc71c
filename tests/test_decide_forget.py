"""PeerForgotten (`clawd peer forget`) in the pure reconciler: the record goes, the keeper is
told to delete the files, and what waited on or counted the peer lets go of it."""

from __future__ import annotations

import dataclasses

from test_reconciler import ME, at, configured

from clawd.core.observations import PeerForgotten, Started
from clawd.decide.reconciler import Reconciler
from clawd.decide.view import FleetView, Thresholds


def verified(fleet_view: FleetView) -> FleetView:
    """As if each peer had proven its identity over SSH (what the election counts)."""
    peers = {g: dataclasses.replace(r, verified=True) for g, r in fleet_view.peers.items()}
    return dataclasses.replace(fleet_view, peers=peers)


def test_forgotten_peer_leaves_the_view_and_the_lead() -> None:
    fleet = configured("gw-b", "gw-c")
    fleet.view = verified(fleet.view)
    low = dataclasses.replace(fleet.view.peers["gw-b"].instance, lead_number=1)
    fleet.view = dataclasses.replace(
        fleet.view,
        peers={
            **fleet.view.peers,
            "gw-b": dataclasses.replace(fleet.view.peers["gw-b"], instance=low),
        },
    )
    for t in (1, 2):
        fleet.ping("gw-b", t, True)
        fleet.ping("gw-c", t, True)
    assert fleet.view.leader == "gw-b"

    decision = fleet.feed(PeerForgotten("gw-b", at(3)))
    assert set(fleet.view.peers) == {"gw-c"}
    assert decision.forgotten == ["gw-b"]
    assert fleet.view.leader != "gw-b", "a forgotten peer cannot lead"
    # A new leader is an incident; gw-b going is not an outage (no `offline`).
    assert [i.event_type.value for i in decision.incidents] == ["leader_change"]

    # Its late ping (in flight when it was forgotten) does not bring it back.
    fleet.ping("gw-b", 4, True)
    assert "gw-b" not in fleet.view.peers


def test_unknown_or_own_id_changes_nothing() -> None:
    fleet = configured("gw-b")
    before = fleet.view
    for gid in ("gw-zz", ME.gateway_id):
        decision = fleet.feed(PeerForgotten(gid, at(1)))
        assert decision.forgotten == [] and fleet.view.peers == before.peers


def test_start_up_wait_stops_waiting_for_it() -> None:
    thresholds = Thresholds(settle=at(10) - at(0), settle_min=at(5) - at(0))
    fleet = configured("gw-b", "gw-c")
    fleet.reconciler = Reconciler(thresholds)
    fleet.feed(Started(at(0)))
    assert fleet.view.settle is not None and fleet.view.settle.unheard == {"gw-b", "gw-c"}
    fleet.feed(PeerForgotten("gw-c", at(1)))
    assert fleet.view.settle is not None and fleet.view.settle.unheard == {"gw-b"}
    # The one it still waits for answers: the wait ends, gw-c is not waited for.
    fleet.ping("gw-b", 6, True)
    assert fleet.view.settle is None
