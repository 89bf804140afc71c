"""Incidents go to the store and to the journal, as one readable line with fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from clawd.core import logfmt
from clawd.core.journal import ERROR, INFO, NOTICE, WARNING, JournalSender
from clawd.core.model import EventType, Incident
from clawd.core.text import printable
from clawd.decide.view import Note
from clawd.keep.store.repository import Repository

log = structlog.get_logger("clawd.incident")

PRIORITY = {
    EventType.OFFLINE: WARNING,
    EventType.ONLINE: NOTICE,
    EventType.RECOVERY: NOTICE,
    EventType.LEADER_CHANGE: NOTICE,
    EventType.REINSTALL: NOTICE,
    EventType.SKILL_SYNC: INFO,
    EventType.PARTITION: WARNING,
    EventType.PARTITION_END: NOTICE,
    EventType.UNREACHABLE: WARNING,
    EventType.FLAP_START: WARNING,
    EventType.FLAP_STOP: NOTICE,
}
NOTE_PRIORITY = {"peer_unresponsive": WARNING, "self_doubt": WARNING, "self_trust": NOTICE}
LEVEL = {ERROR: "error", WARNING: "warning", NOTICE: "info", INFO: "info"}


def _fields(gateway_id: str, details: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"gateway": gateway_id}
    for key, value in details.items():
        # Peer-supplied text (names) must not forge log lines or terminal escapes.
        if isinstance(value, str):
            fields[key] = printable(value)
        elif isinstance(value, int | float | bool) or value is None:
            fields[key] = value
    return fields


def _line(event: str, fields: dict[str, Any]) -> str:
    """logfmt: a name like `x event=offline` is one quoted value, not a forged field."""
    return logfmt.line([("event", event), *((k, v) for k, v in fields.items() if v is not None)])


class IncidentRecorder:
    def __init__(self, repo: Repository, journal: JournalSender | None = None) -> None:
        self.repo = repo
        self.journal = journal
        # Called with every recorded incident (metrics count them).
        self.listeners: list[Callable[[Incident], None]] = []
        # Called before an incident is recorded: may add to its details (a silence's id).
        self.annotators: list[Callable[[Incident], None]] = []

    async def record(self, incident: Incident) -> None:
        for annotate in self.annotators:
            annotate(incident)
        await self.repo.record_incident(incident)
        for listener in self.listeners:
            listener(incident)
        fields = _fields(incident.gateway_id, incident.details)
        self._emit(incident.event_type.value, PRIORITY[incident.event_type], fields)

    def note(self, note: Note) -> None:
        """A journal line that is not an incident (unresponsive, flapping)."""
        fields = _fields(note.gateway_id, dict(note.fields))
        self._emit(note.event, NOTE_PRIORITY.get(note.event, INFO), fields)

    def _emit(self, event: str, priority: int, fields: dict[str, Any]) -> None:
        if self.journal is not None and self.journal.send(
            _line(event, fields), priority, {"event": event, **fields}
        ):
            return
        getattr(log, LEVEL[priority])(event, syslog_priority=priority, **fields)
