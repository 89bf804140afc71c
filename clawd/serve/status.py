"""The fleet as `clawd status` shows it, from the store or from the running daemon."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clawd.core.model import Instance, PeerState
from clawd.core.text import printable

COLUMNS = (
    ("NAME", "name", 18),
    ("IP", "ip", 15),
    ("STATUS", "status", 12),
    ("LAST SEEN", "lastSeen", 19),
    ("MISSED", "missedPings", 6),
    ("SSH", "ssh", 3),
    ("INST", "installed", 4),
    ("MDNS", "mdns", 4),
    ("PHI", "phi", 6),
)


def peer_rows(
    instances: Mapping[str, Instance], states: Mapping[str, PeerState], me: str | None = None
) -> list[dict[str, Any]]:
    rows = []
    for gid in sorted(states):
        if gid == me:
            continue
        state = states[gid]
        inst = instances.get(gid)
        rows.append(
            {
                "gatewayId": gid,
                "name": inst.name if inst else gid,
                "ip": inst.ip if inst else None,
                "status": state.status.value,
                "lastSeen": state.last_seen.isoformat() if state.last_seen else None,
                "missedPings": state.missed_pings,
                "ssh": state.ssh_connectivity,
                "installed": state.claw_clan_installed,
                "mdns": state.mdns_broadcasting,
            }
        )
    return rows


def _cell(value: Any, key: str, width: int) -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif value is None:
        text = "-"
    elif key == "phi":
        text = f"{value:.1f}" if isinstance(value, int | float) else str(value)
    elif key == "lastSeen":
        text = str(value)[:19].replace("T", " ")
    else:
        text = str(value)
    return printable(text)[:width].ljust(width)


def render_table(rows: list[dict[str, Any]], leader: str | None) -> str:
    header = " ".join(title.ljust(width) for title, _, width in COLUMNS)
    lines = [header.rstrip()]
    for row in rows:
        cells = " ".join(_cell(row.get(key), key, width) for _, key, width in COLUMNS)
        mark = "  (leader)" if row["gatewayId"] == leader else ""
        lines.append(cells.rstrip() + mark)
    lines.append(f"leader: {leader or 'none'}")
    return "\n".join(lines)


def files_written_at(home: Path) -> float | None:
    """When the store's files that status reads were last written (epoch seconds)."""
    paths = [home / "fleet.json", home / "state.json", *(home / "peers").glob("*.json")]
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=None)


def age_text(seconds: float) -> str:
    """`42 s`, `3 min`, `5 h`, `2 days`: how old, at a glance."""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def not_running_line(reason: str, written_at: float | None, now: float | None = None) -> str:
    """The first line of `clawd status` when no daemon answers: what is shown is old."""
    if written_at is None:
        return f"clawd is not running ({reason}); no files written yet"
    age = age_text((time.time() if now is None else now) - written_at)
    return f"clawd is not running ({reason}); showing the files as of {age} ago"
