"""Incidents reach the store and the journal: fields journalctl filters on, right priority."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawd.core.journal import JournalSender, encode_entry
from clawd.core.logs import configure_logging
from clawd.core.model import EventType, Incident, Instance
from clawd.decide.view import Note
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.json_store import JsonStore
from clawd.keep.store.repository import FleetRepository


def parse_entry(data: bytes) -> dict[str, str]:
    """Decode journald's native format, as journald itself does."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            fields[line.decode()] = data[nl + 9 : nl + 9 + size].decode()
            i = nl + 9 + size + 1
    return fields


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[socket.socket, JournalSender]]:
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    sender = JournalSender(path)
    yield server, sender
    sender.close()
    server.close()


async def _repo(tmp_path: Path) -> FleetRepository:
    repo = FleetRepository(JsonStore(tmp_path), Instance("gw-a", "alpha"))
    await repo.open()
    return repo


async def test_incident_goes_to_store_and_journal_with_fields(
    tmp_path: Path, journald: tuple[socket.socket, JournalSender]
) -> None:
    server, sender = journald
    repo = await _repo(tmp_path)
    recorder = IncidentRecorder(repo, sender)
    incident = Incident("gw-b", EventType.OFFLINE, {"name": "beta", "missed_pings": 3})
    await recorder.record(incident)

    entry = parse_entry(server.recv(65536))
    assert entry["MESSAGE"] == "event=offline gateway=gw-b name=beta missed_pings=3"
    assert entry["PRIORITY"] == "4"  # warning
    assert entry["SYSLOG_IDENTIFIER"] == "clawd"
    assert entry["CLAW_EVENT"] == "offline"
    assert entry["CLAW_GATEWAY"] == "gw-b"
    assert entry["CLAW_MISSED_PINGS"] == "3"
    rows = await asyncio.to_thread(lambda: list(JsonStore(tmp_path).read_incidents()))
    stored = [i for _, i in rows]
    assert [i.key for i in stored] == [incident.key]


@pytest.mark.parametrize(
    ("event", "priority"),
    [
        (EventType.ONLINE, "5"),
        (EventType.RECOVERY, "5"),
        (EventType.LEADER_CHANGE, "5"),
        (EventType.SKILL_SYNC, "6"),
    ],
)
async def test_priorities(
    tmp_path: Path, journald: tuple[socket.socket, JournalSender], event: EventType, priority: str
) -> None:
    server, sender = journald
    await IncidentRecorder(await _repo(tmp_path), sender).record(Incident("gw-b", event))
    assert parse_entry(server.recv(65536))["PRIORITY"] == priority


async def test_hostile_peer_name_cannot_forge_lines_or_fields(
    tmp_path: Path, journald: tuple[socket.socket, JournalSender]
) -> None:
    server, sender = journald
    hostile = "evil\nCLAW_EVENT=online\x1b[2J'; DROP TABLE ping_history; --"
    await IncidentRecorder(await _repo(tmp_path), sender).record(
        Incident("gw-b", EventType.OFFLINE, {"name": hostile})
    )
    entry = parse_entry(server.recv(65536))
    assert entry["CLAW_EVENT"] == "offline"
    assert "\n" not in entry["MESSAGE"] and "\x1b" not in entry["MESSAGE"]
    assert "\\n" in entry["CLAW_NAME"] and "\\x1b" in entry["CLAW_NAME"]


def test_multiline_values_use_the_binary_form() -> None:
    data = encode_entry({"MESSAGE": "a\nb", "PRIORITY": 6})
    assert parse_entry(data) == {"MESSAGE": "a\nb", "PRIORITY": "6"}
    with pytest.raises(ValueError, match="invalid journal field"):
        encode_entry({"bad-name": 1})


async def test_without_journal_a_logfmt_line_is_written(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("info", out)
    recorder = IncidentRecorder(await _repo(tmp_path), None)
    await recorder.record(Incident("gw-b", EventType.OFFLINE, {"name": "beta", "missed_pings": 3}))
    recorder.note(Note("self_doubt", "gw-me", {"reason": "stalled"}))
    lines = out.getvalue().splitlines()
    assert "level=warning event=offline gateway=gw-b name=beta missed_pings=3" in lines[0]
    assert "level=warning event=self_doubt gateway=gw-me reason=stalled" in lines[1]
    assert "syslog_priority" not in out.getvalue()


async def test_journal_gone_falls_back_to_the_log_line(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("info", out)
    sender = JournalSender(str(tmp_path / "no-such.sock"))
    try:
        await IncidentRecorder(await _repo(tmp_path), sender).record(
            Incident("gw-b", EventType.RECOVERY)
        )
    finally:
        sender.close()
    assert "event=recovery gateway=gw-b" in out.getvalue()
