"""Silences: a planned reboot is recorded, shown, and not told.

A silence names a machine (or all of them) and a time span. An incident of a silenced
machine within it is recorded as ever, with `details.silenced` = the silence's id, and
sent to nobody. Fleet-wide with backend postgres (table `fleet_silence`, migration 011:
any machine's `clawd silence add` silences for the acting leader, which sends), local with
json (`<home>/silences.json`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from clawd.core.model import Incident

SILENCES_FILE = "silences.json"
SILENCED = "silenced"  # the details key an incident's silence id goes in


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    gateway: str | None  # None: every machine
    starts: datetime
    ends: datetime
    reason: str
    author: str
    created: datetime

    def covers(self, incident: Incident) -> bool:
        """Is `incident` about a machine this silences, at a time it does?"""
        if not self.starts <= incident.timestamp < self.ends:
            return False
        if self.gateway is None or incident.gateway_id == self.gateway:
            return True
        members = incident.details.get("members")  # a partition's machines
        return isinstance(members, list) and self.gateway in members

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "gateway": self.gateway,
            "starts": self.starts.isoformat(),
            "ends": self.ends.isoformat(),
            "reason": self.reason,
            "author": self.author,
            "created": self.created.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Silence:
        gateway = data.get("gateway")
        return cls(
            id=str(data["id"]),
            gateway=None if gateway is None else str(gateway),
            starts=datetime.fromisoformat(str(data["starts"])),
            ends=datetime.fromisoformat(str(data["ends"])),
            reason=str(data.get("reason", "")),
            author=str(data.get("author", "")),
            created=datetime.fromisoformat(str(data["created"])),
        )


def new_id() -> str:
    return f"s-{secrets.token_hex(4)}"


def silencing(silences: Sequence[Silence], incident: Incident) -> Silence | None:
    """The silence that covers `incident` (the one ending last), if any."""
    covering = [s for s in silences if s.covers(incident)]
    return max(covering, key=lambda s: s.ends) if covering else None


# -- backend json: a file in the home ------------------------------------------------


def read_file(home: Path) -> list[Silence]:
    """The silences in `<home>/silences.json` (none if it is missing). ValueError names
    the file when it is not clawd's."""
    path = home / SILENCES_FILE
    try:
        data = json.loads(path.read_text())
        return [Silence.from_json(item) for item in data["silences"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a silences file ({type(exc).__name__}: {exc})") from None


def write_file(home: Path, silences: Sequence[Silence]) -> None:
    """Atomically (a new file renamed over the old one), 0600."""
    path = home / SILENCES_FILE
    tmp = path.with_name(f".{SILENCES_FILE}.tmp")
    body = json.dumps({"silences": [s.to_json() for s in silences]}, indent=2) + "\n"
    with tmp.open("w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


# -- backend postgres: a table ----------------------------------------------------------

PG_INSERT = """
INSERT INTO fleet_silence (id, gateway_id, starts_at, ends_at, reason, author, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
# Active and future ones (the ones that can still silence something).
PG_CURRENT = """
SELECT id, gateway_id, starts_at, ends_at, reason, author, created_at FROM fleet_silence
WHERE removed_at IS NULL AND ends_at > $1
ORDER BY starts_at, id
"""
PG_REMOVE = "UPDATE fleet_silence SET removed_at = now() WHERE id = $1 AND removed_at IS NULL"


def from_row(row: Any) -> Silence:
    return Silence(
        id=str(row["id"]),
        gateway=row["gateway_id"],
        starts=row["starts_at"],
        ends=row["ends_at"],
        reason=str(row["reason"]),
        author=str(row["author"]),
        created=row["created_at"],
    )
