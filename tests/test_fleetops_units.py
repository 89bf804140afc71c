"""Pure parts of fleet operations: what is pushed, who may act, backoff."""

from __future__ import annotations

import dataclasses
import json

from clawd.act.fleetops.leadership import acting_leader, is_older
from clawd.act.fleetops.peer_config import config_for_peer
from clawd.act.fleetops.recovery import needs_reinstall
from clawd.act.fleetops.retry import PeerBackoff
from clawd.core.model import Instance, PeerState, PeerStatus
from clawd.core.trust import Trust
from clawd.decide.view import FleetView, PeerRecord


def _view(me_lead: int | None, peers: dict[str, tuple[int | None, PeerStatus]]) -> FleetView:
    me = Instance("gw-me", "me", lead_number=me_lead, version="1.2.0")
    records = {
        gid: PeerRecord(
            Instance(gid, gid, lead_number=lead, ip="127.0.0.9", version="1.2.0"),
            PeerState(gid, status=status, ssh_connectivity=status is PeerStatus.ONLINE),
            verified=status is not PeerStatus.UNKNOWN,  # answered: proven who it is
            trust=Trust.KNOWN_HOSTS,
        )
        for gid, (lead, status) in peers.items()
    }
    from clawd.decide.view import elect_leader

    view = FleetView(me, records)
    return FleetView(me, records, elect_leader(view))


def test_pushed_config_keeps_the_peers_identity_and_static_peers() -> None:
    ours = {
        "backend": "postgres",
        "postgres": {"host": "db"},
        "instance": {"gatewayId": "gw-me"},
        "peers": [{"name": "x", "ip": "10.0.0.1"}],
    }
    theirs = json.dumps({"backend": "json", "instance": {"gatewayId": "gw-b"}}).encode()
    merged = json.loads(config_for_peer(ours, theirs, Trust.KNOWN_HOSTS).data)
    assert merged == {
        "backend": "postgres",
        "postgres": {"host": "db"},
        "instance": {"gatewayId": "gw-b"},
    }
    # A peer without a (valid) config gets the fleet-wide part only, never our identity.
    for missing in (None, b"{not json", b"[1]"):
        assert "instance" not in json.loads(config_for_peer(ours, missing, Trust.KNOWN_HOSTS).data)
    # Pushing twice gives the same bytes: the second push is "unchanged".
    once = config_for_peer(ours, theirs, Trust.KNOWN_HOSTS).data
    assert config_for_peer(ours, once, Trust.KNOWN_HOSTS).data == once


def test_only_a_leader_no_unknown_peer_can_outrank_acts() -> None:
    # Lowest lead number and every other peer ranks lower: act.
    assert acting_leader(_view(1, {"gw-b": (2, PeerStatus.UNKNOWN)}))
    # Someone with a better rank is online: not the leader.
    assert not acting_leader(_view(2, {"gw-b": (1, PeerStatus.ONLINE)}))
    # A better-ranked peer not pinged yet may be up: wait.
    assert not acting_leader(_view(2, {"gw-b": (1, PeerStatus.UNKNOWN)}))
    # ... but once it is known to be down, lead.
    assert acting_leader(_view(2, {"gw-b": (1, PeerStatus.OFFLINE)}))
    # No lead number: never acts.
    assert not acting_leader(_view(None, {}))
    # A better-ranked peer that answered but never proved who it is cannot lead, so it
    # cannot hold the leader back either (an announcement is no identity).
    unproven = _view(2, {"gw-b": (1, PeerStatus.ONLINE)})
    record = dataclasses.replace(unproven.peers["gw-b"], verified=False)
    unproven = FleetView(unproven.me, {"gw-b": record}, "gw-me")
    assert acting_leader(unproven)


def test_versions_compare_numerically() -> None:
    assert is_older("1.9.0", "1.10.0")
    assert not is_older("1.10.0", "1.9.9")
    assert not is_older(None, "1.0") and not is_older("dev", "1.0")


def test_reinstall_wanted_for_reachable_peers_without_claw_clan_or_older() -> None:
    view = _view(1, {"gw-b": (2, PeerStatus.ONLINE), "gw-c": (3, PeerStatus.OFFLINE)})
    # Nothing installed anywhere: only the peer reachable over SSH qualifies.
    assert needs_reinstall(view, "1.2.0") == {"gw-b": "claw-clan not installed"}
    view.peers["gw-b"].state.claw_clan_installed = True
    assert needs_reinstall(view, "1.2.0") == {}
    assert needs_reinstall(view, "1.3.0") == {"gw-b": "version 1.2.0 older than 1.3.0"}
    # Never to a peer that has not proven who it is (case 1: a stranger's announcement).
    view.peers["gw-b"].state.claw_clan_installed = False
    stranger = dataclasses.replace(view.peers["gw-b"], verified=False)
    assert needs_reinstall(FleetView(view.me, {"gw-b": stranger}), "1.2.0") == {}


def test_backoff_doubles_and_reports_each_error_once() -> None:
    b = PeerBackoff(1.0, 4.0)
    assert b.due("p", 0.0)
    assert b.failed("p", "refused", 0.0)  # new error: log it
    assert not b.due("p", 0.5) and b.due("p", 1.0)
    assert not b.failed("p", "refused", 1.0)  # same error: quiet
    assert b.next_due() == 3.0  # 2 s after t=1
    assert not b.failed("p", "refused", 3.0)
    assert b.next_due() == 7.0  # capped at 4 s
    assert b.failed("p", "timed out", 7.0)
    b.forget("p")
    assert b.due("p", 7.0) and b.next_due() is None
