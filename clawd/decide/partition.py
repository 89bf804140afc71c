"""Partitions: many peers dropping together are one event, not N offline incidents.

A peer whose detector says offline first asks: did at least `partition_min_peers`, and
`partition_fraction` of the fleet, drop (were online, now failing) within one
`partition_window` of it? Then they form one partition: one `partition` incident, each
member `unknown` (rule `partitioned`). Peers that drop within a window of its start join
it silently. A member that answers leaves it; when fewer than `partition_min_peers` are
still down, one `partition_end`, and the rest are held for one more window before their
own pings judge them (reconnects after a heal back off; that is not a new failure).
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime

from clawd.core.model import EventType, Incident, PeerStatus
from clawd.decide.rules import Probes
from clawd.decide.view import Decision, Partition, Thresholds

NAMES_IN_DETAILS = 50


def _size(t: Thresholds, peers: int) -> int:
    return max(t.partition_min_peers, math.ceil(t.partition_fraction * peers))


def open_or_join(d: Decision, gid: str, now: datetime, t: Thresholds) -> list[str]:
    """`gid` would go offline: is it part of a partition? The other members whose status
    the caller must decide again (they just became partitioned)."""
    view = d.view
    record = view.peers[gid]
    current = view.partition
    if current is not None:
        if (
            gid not in current.members
            and record.reported is PeerStatus.ONLINE
            and record.failing_since is not None
            and record.failing_since <= current.started + t.partition_window
        ):
            joined = dataclasses.replace(
                current, members=current.members | {gid}, total=current.total + 1
            )
            d.view = dataclasses.replace(view, partition=joined)
        return []
    # Only peers that were up can drop: a fleet still connecting at start (handshakes
    # queue) is not a partition.
    started = record.failing_since or now
    dropped = [
        g
        for g, r in view.peers.items()
        if r.failing_since is not None
        and abs(r.failing_since - started) <= t.partition_window
        and r.reported is PeerStatus.ONLINE
    ]
    if len(dropped) < _size(t, len(view.peers)):
        return []
    members = frozenset(dropped)
    # Probe verdicts that came in before the partition was recognised count too.
    reached = frozenset(g for g in members if view.peers[g].probes is Probes.REACHABLE)
    d.view = dataclasses.replace(
        view,
        partition=Partition(
            started=now, members=members, total=len(members), reachable_via_peers=reached
        ),
    )
    names = sorted(view.peers[g].instance.name for g in members)
    everyone = len(members) == len(view.peers)
    d.incidents.append(
        Incident(
            gateway_id=view.me.gateway_id,
            event_type=EventType.PARTITION,
            details={
                "peers": len(members),
                "of": len(view.peers),
                "names": names[:NAMES_IN_DETAILS],
                "window_seconds": t.partition_window.total_seconds(),
                "scope": (
                    "every peer: this instance's own network or gateway"
                    if everyone
                    else "part of the fleet"
                ),
            },
            timestamp=now,
        )
    )
    return [m for m in members if m != gid]


def reached_by_peers(d: Decision, gid: str) -> None:
    """Other peers reached this member: the partition is ours, not the fleet's."""
    current = d.view.partition
    if current is not None and gid in current.members:
        current = dataclasses.replace(
            current, reachable_via_peers=current.reachable_via_peers | {gid}
        )
        d.view = dataclasses.replace(d.view, partition=current)


def leave(d: Decision, gid: str, now: datetime, t: Thresholds) -> None:
    """`gid` answered again."""
    current = d.view.partition
    if current is None or gid not in current.members:
        return
    current = dataclasses.replace(current, members=current.members - {gid})
    d.view = dataclasses.replace(d.view, partition=current)
    if len(current.members) >= t.partition_min_peers:
        return
    d.view = dataclasses.replace(d.view, partition=None)
    still = sorted(d.view.peers[g].instance.name for g in current.members)
    d.incidents.append(
        Incident(
            gateway_id=d.view.me.gateway_id,
            event_type=EventType.PARTITION_END,
            details={
                "duration_seconds": round((now - current.started).total_seconds(), 1),
                "peers": current.total,
                "back": current.total - len(current.members),
                "still_down": still[:NAMES_IN_DETAILS],
                "reachable_via_peers": len(current.reachable_via_peers),
            },
            timestamp=now,
        )
    )
    hold = now + t.partition_window
    for member in current.members:
        record = d.view.peers.get(member)
        if record is not None:
            d.put(dataclasses.replace(record, partition_hold_until=hold))
