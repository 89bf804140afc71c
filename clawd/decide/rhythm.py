"""When a peer's heartbeat gap may be learned as its rhythm (the accrual detector's input)."""

from __future__ import annotations

from clawd.core.model import PeerStatus
from clawd.decide.rules import Probes
from clawd.decide.view import FleetView, PeerRecord, partitioned


def rhythm_learnable(view: FleetView, record: PeerRecord) -> bool:
    """Does the gap ending now say how this peer's heartbeats come (learn it)?

    Not when it spans our own stall, a partition, or an outage others confirmed (probes
    failed too, or claw-clan withdrew its mDNS record): learning those would excuse the
    next real crash for hours. Lost pings that only we saw are learned: they are the
    peer's link, and excusing them is what keeps a bursty peer from false offlines.
    """
    if view.doubting or partitioned(view, record):
        return False
    outage = record.probes is Probes.UNREACHABLE or record.rule == "mdns-gone"
    return not (record.state.status is PeerStatus.OFFLINE and outage)
