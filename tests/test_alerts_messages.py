"""Issue 16: what a person reads of an incident (alerts/from_incidents.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from clawd.core.model import EventType, Incident
from clawd.serve.alerts.from_incidents import message_for

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_an_outage_names_its_witnesses_and_the_machine() -> None:
    incident = Incident(
        "m5",
        EventType.OFFLINE,
        {
            "name": "build-box",
            "witnesses": [{"observer": "m1"}, {"observer": "m2"}],
            "postgres_password": "s3cret",  # whatever the details hold, not sent
        },
        T0,
    )
    message = message_for(incident)
    assert message.title == "clawd: build-box is offline"
    assert message.body == "Seen by 2: m1, m2.\nAt 2026-12-04T12:00:00+00:00."
    assert (message.key, message.event, message.gateway) == (str(incident.key), "offline", "m5")
    assert "s3cret" not in message.title + message.body


def test_a_recovery_says_how_long_it_was_down_and_a_partition_who() -> None:
    back = Incident("m5", EventType.RECOVERY, {"name": "m5", "downtime_seconds": 3725.2}, T0)
    assert message_for(back).body.startswith("Down for 1 h 2 min.")
    names = [f"m{n}" for n in range(12)]
    cut = Incident("m1", EventType.PARTITION, {"peers": 12, "names": names}, T0)
    message = message_for(cut, key=str(uuid.UUID(int=7)))
    assert message.title == "clawd: Partition: 12 machines cut off together"
    assert message.body.splitlines()[0] == "m0, m1, m2, m3, m4, m5, m6, m7, m8, m9 and 2 more"
    assert message.key == str(uuid.UUID(int=7))


def test_a_hostile_name_cannot_forge_lines() -> None:
    incident = Incident("m5", EventType.OFFLINE, {"name": "evil\nclawd: all is fine\x1b[2J"}, T0)
    message = message_for(incident)
    assert "\n" not in message.title and "\x1b" not in message.title
