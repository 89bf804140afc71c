"""A peer's status change: the state written, the incident it deserves (`offline`,
`online`, `recovery`, `unreachable`) and the `peer_unresponsive` note.

Pure, like the reconciler that calls it: a Decision in, the same Decision grown.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from clawd.core.model import EventType, Incident, PeerStatus
from clawd.decide.view import REPORTED, Decision, Note, Outage, PeerRecord


def transition(d: Decision, record: PeerRecord, new: PeerStatus, now: datetime) -> None:
    old = record.state.status
    gid = record.instance.gateway_id
    if new is not old:
        d.moved = True
        record = dataclasses.replace(
            record, state=dataclasses.replace(record.state, status=new, updated_at=now)
        )
        if new is PeerStatus.UNRESPONSIVE:
            d.notes.append(
                Note(
                    "peer_unresponsive",
                    gid,
                    {
                        "name": record.instance.name,
                        "missed_pings": record.state.missed_pings,
                        "rule": record.rule,
                        "mdns": record.state.mdns_broadcasting,
                        "tcp": record.tcp_reachable,
                    },
                )
            )
        if not record.flapping:
            record = report(d, record, new, now)
        record = dataclasses.replace(record, since=now)
    if record.rule == "reachable-by-peers" and not record.unreachable_reported:
        record = _unreachable(d, record, now)
    previous = d.origin.get(gid)
    if previous is None or record.state != previous.state:
        d.save_state(record.state)
    d.put(record)


def _unreachable(d: Decision, record: PeerRecord, now: datetime) -> PeerRecord:
    inst = record.instance
    d.incidents.append(
        Incident(
            gateway_id=inst.gateway_id,
            event_type=EventType.UNREACHABLE,
            details={
                "name": inst.name,
                "ip": inst.ip,
                "scope": "unreachable from this instance only",
                "reachable_by": list(record.reachable_by),
                "missed_pings": record.state.missed_pings,
            },
            timestamp=now,
        )
    )
    return dataclasses.replace(record, unreachable_reported=True)


def report(d: Decision, record: PeerRecord, new: PeerStatus, now: datetime) -> PeerRecord:
    found = _incident_for(record, new, now)
    if found is None:
        return record
    event, details = found
    d.incidents.append(
        Incident(
            gateway_id=record.instance.gateway_id,
            event_type=event,
            details=details,
            timestamp=now,
        )
    )
    if event is EventType.OFFLINE:
        return dataclasses.replace(record, reported=new, outage=Outage(record.state.last_seen, now))
    return dataclasses.replace(record, reported=new, outage=None)


def _incident_for(
    record: PeerRecord, new: PeerStatus, now: datetime
) -> tuple[EventType, dict[str, Any]] | None:
    """The incident a move of the reported status to `new` deserves, if any."""
    if new not in REPORTED or new is record.reported:
        return None
    state, inst = record.state, record.instance
    details: dict[str, Any] = {"name": inst.name, "ip": inst.ip, "previous": record.reported.value}
    if new is PeerStatus.OFFLINE:
        details["missed_pings"] = state.missed_pings
        details["last_seen"] = state.last_seen.isoformat() if state.last_seen else None
        details["rule"] = record.rule
        details["phi"] = round(min(record.phi, 999.0), 1)
        return EventType.OFFLINE, details
    if record.reported is PeerStatus.OFFLINE:
        # The outage began at the last successful contact, not at the verdict: noticing
        # took `offlineAfterMissed` pings, and that is part of what the peer was down.
        outage = record.outage or Outage(None, record.since)
        began = outage.last_seen or outage.judged
        if began is not None:
            details["downtime_seconds"] = round((now - began).total_seconds(), 1)
        if outage.judged is not None:
            details["offline_verdict_seconds"] = round((now - outage.judged).total_seconds(), 1)
        return EventType.RECOVERY, details
    return EventType.ONLINE, details
