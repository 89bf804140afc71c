"""When this instance may act as the leader, and which peers need what."""

from __future__ import annotations

import re

from clawd.act.fleetops.remote import PeerAddress
from clawd.core.model import PeerStatus
from clawd.decide.view import FleetView

_NUMBER = re.compile(r"\d+")
DOWN = (PeerStatus.OFFLINE, PeerStatus.UNRESPONSIVE)


def acting_leader(view: FleetView) -> bool:
    """This instance leads, and every peer that could outrank it is known to be down.

    A peer still `unknown` (not pinged yet, e.g. just after start) might be a better
    leader that is up: acting before it is seen would race it. One that answered but has
    not proven who it is (unverified) cannot lead, so it cannot hold us back either.
    With backend postgres, it must also hold the leader lease (keep/lease.py): a leader
    that lost its database session stops acting at once.
    """
    me = view.me
    if view.leader != me.gateway_id or me.lead_number is None:
        return False
    if view.lease is not None and not view.lease.held:
        return False  # backend postgres: only the holder of the lease lock acts
    for record in view.peers.values():
        rank = record.instance.lead_number
        if rank is None:
            continue
        outranks = (rank, record.instance.gateway_id) < (me.lead_number, me.gateway_id)
        unproven = not record.verified and record.state.status is not PeerStatus.UNKNOWN
        if outranks and record.state.status not in DOWN and not unproven:
            return False
    return True


def version_key(version: str | None) -> tuple[int, ...] | None:
    """ "1.10.2" -> (1, 10, 2); None when there is no number to compare."""
    if not version:
        return None
    numbers = tuple(int(n) for n in _NUMBER.findall(version))
    return numbers or None


def is_older(theirs: str | None, ours: str | None) -> bool:
    a, b = version_key(theirs), version_key(ours)
    return a is not None and b is not None and a < b


def addresses(view: FleetView, default_user: str) -> dict[str, PeerAddress]:
    """Every peer with an address, by gateway id."""
    return {
        gid: PeerAddress(
            gid,
            r.instance.name,
            r.instance.ip,
            r.instance.ssh_port,
            r.instance.ssh_user or default_user,
            r.trust,
        )
        for gid, r in view.peers.items()
        if r.instance.ip
    }
