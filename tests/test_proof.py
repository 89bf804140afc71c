"""What proves a peer in the reconciler: an SSH read of its own state.json, never an
announcement (issue 14, cases 2 and 3 at the rule level; the daemon-level tests are in
tests/test_trust_membership.py)."""

from __future__ import annotations

from clawd.core.model import Instance, PeerStatus
from clawd.core.observations import MdnsSeen, PeerConfigured, PeerProof, PingResult
from clawd.core.trust import Trust
from clawd.decide.view import elect_leader
from tests.test_reconciler import ME, Fleet, at, peer, verified_seen


def proof(gid: str | None, lead: int | None, trust: Trust = Trust.KNOWN_HOSTS) -> PeerProof:
    return PeerProof(trust, "SHA256:k", gid, lead)


def answered(fleet: Fleet, gid: str, t: float, p: PeerProof | None) -> None:
    fleet.feed(PingResult(gid, at(t), True, 3, tcp_reachable=True, proof=p))


def test_an_unproven_announcement_creates_no_peer() -> None:
    fleet = Fleet()
    decision = fleet.feed(MdnsSeen(peer("usurper", lead=0), at(0)))
    assert fleet.view.peers == {}
    assert decision.instances == [] and decision.states == []


def test_a_hint_never_moves_a_known_peer_nor_sets_its_lead() -> None:
    fleet = Fleet()
    fleet.feed(verified_seen(peer("gw-b", lead=10), at(0)))
    elsewhere = Instance(gateway_id="gw-b", name="b", ip="127.0.9.9", ssh_port=2222, lead_number=0)
    decision = fleet.feed(MdnsSeen(elsewhere, at(1)))
    inst = fleet.view.peers["gw-b"].instance
    assert (inst.ip, inst.ssh_port, inst.lead_number) == ("127.0.0.2", 22, 10)
    assert decision.rechecks == ["gw-b"]  # its state.json is read again: it may have changed


def test_the_lead_number_comes_from_the_peers_own_state_file() -> None:
    fleet = Fleet()
    fleet.feed(PeerConfigured(peer("gw-b", lead=10), at(0)))
    answered(fleet, "gw-b", 1, proof("gw-b", 1))
    assert fleet.view.peers["gw-b"].instance.lead_number == 1
    assert elect_leader(fleet.view) == "gw-b"


def test_a_peer_that_answers_as_another_id_is_unverified_never_leader_logged_once() -> None:
    fleet = Fleet()
    fleet.feed(PeerConfigured(peer("usurper", lead=0), at(0)))
    for t in range(1, 5):
        answered(fleet, "usurper", t, proof("gw-b", 10))
    record = fleet.view.peers["usurper"]
    assert record.state.status is PeerStatus.ONLINE
    assert not record.verified and record.trust is Trust.NONE
    assert elect_leader(fleet.view) == ME.gateway_id
    assert fleet.notes().count("peer_identity_mismatch") == 1


def test_a_peer_without_state_file_is_verified_only_as_the_operators_static_peer() -> None:
    fleet = Fleet()
    # Found by mDNS (membership proved it then), its state.json gone since: unverified.
    fleet.feed(verified_seen(peer("gw-m", lead=0), at(0)))
    answered(fleet, "gw-m", 1, proof(None, None))
    assert not fleet.view.peers["gw-m"].verified
    # Static, first-use key: unverified.
    fleet.feed(PeerConfigured(peer("gw-b", lead=0), at(0)))
    answered(fleet, "gw-b", 1, proof(None, None, Trust.FIRST_USE))
    assert not fleet.view.peers["gw-b"].verified
    assert elect_leader(fleet.view) == ME.gateway_id
    # Static, a key in the operator's known_hosts at the configured address: the operator's
    # word is the proof; the lead number is the config's.
    answered(fleet, "gw-b", 2, proof(None, None, Trust.KNOWN_HOSTS))
    assert fleet.view.peers["gw-b"].verified
    assert elect_leader(fleet.view) == "gw-b"


def test_an_untrusted_key_proves_nothing() -> None:
    fleet = Fleet()
    fleet.feed(PeerConfigured(peer("gw-b", lead=0), at(0)))
    answered(fleet, "gw-b", 1, proof("gw-b", 0, Trust.NONE))
    assert not fleet.view.peers["gw-b"].verified


def test_trust_follows_the_key() -> None:
    fleet = Fleet()
    fleet.feed(PeerConfigured(peer("gw-b"), at(0)))
    answered(fleet, "gw-b", 1, proof("gw-b", 10, Trust.FIRST_USE))
    assert fleet.view.peers["gw-b"].trust is Trust.FIRST_USE
    answered(fleet, "gw-b", 2, proof("gw-b", 10, Trust.OPERATOR))
    assert fleet.view.peers["gw-b"].trust is Trust.OPERATOR
