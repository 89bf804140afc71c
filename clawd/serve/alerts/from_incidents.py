"""What a person reads of an incident: one title and a few lines, nothing secret.

Peer-supplied text (names) is made printable; details are summarised, never dumped (they
may grow fields a receiver should not see).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawd.core.model import EventType, Incident
from clawd.core.text import printable
from clawd.serve.alerts.message import Message

NAMES_SHOWN = 10


def _name(incident: Incident) -> str:
    name = incident.details.get("name")
    return printable(str(name)) if isinstance(name, str) and name else incident.gateway_id


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "an unknown time"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{float(seconds):.1f} s"


def _witnesses(details: Mapping[str, Any]) -> str:
    named = details.get("witnesses")
    if not isinstance(named, list) or not named:
        return ""
    observers = [printable(str(w.get("observer"))) for w in named if isinstance(w, dict)]
    return f"Seen by {len(observers)}: {', '.join(observers[:NAMES_SHOWN])}."


def _names(details: Mapping[str, Any], key: str) -> str:
    names = details.get(key)
    if not isinstance(names, list):
        return ""
    shown = [printable(str(n)) for n in names[:NAMES_SHOWN]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _text(incident: Incident) -> tuple[str, list[str]]:
    d, name, event = incident.details, _name(incident), incident.event_type
    if event is EventType.OFFLINE:
        return f"{name} is offline", [_witnesses(d)]
    if event is EventType.RECOVERY:
        return f"{name} is back", [f"Down for {_duration(d.get('downtime_seconds'))}."]
    if event is EventType.ONLINE:
        return f"{name} is online", []
    if event is EventType.PARTITION:
        peers = d.get("peers", "?")
        return f"Partition: {peers} machines cut off together", [
            _names(d, "names"),
            _witnesses(d),
        ]
    if event is EventType.PARTITION_END:
        still = _names(d, "still_down")
        return f"Partition over after {_duration(d.get('duration_seconds'))}", [
            f"Back: {d.get('back', '?')} of {d.get('peers', '?')}.",
            f"Still down: {still}." if still else "",
        ]
    if event is EventType.FLAP_START:
        return f"{name} is flapping", []
    if event is EventType.FLAP_STOP:
        return f"{name} stopped flapping", []
    if event is EventType.UNREACHABLE:
        return f"{name} is unreachable from here only", ["Other peers reach it."]
    if event is EventType.LEADER_CHANGE:
        return f"{printable(str(d.get('new')))} leads the fleet (epoch {d.get('epoch')})", []
    return f"{event.value}: {name}", []


def message_for(incident: Incident, key: str | None = None) -> Message:
    """The notification of `incident`; `key`: its fleet row's key when it has one."""
    title, lines = _text(incident)
    at = incident.timestamp.isoformat(timespec="seconds")
    body = "\n".join([*(line for line in lines if line), f"At {at}."])
    return Message(
        key=key or str(incident.key),
        event=incident.event_type.value,
        title=f"clawd: {title}",
        body=body,
        at=incident.timestamp,
        gateway=incident.gateway_id,
    )
