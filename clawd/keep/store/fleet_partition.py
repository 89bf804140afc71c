"""A partition is one fleet event: machines that drop together make one `partition` row.

When a cable between two halves of the fleet is cut, the observers on the side of the
database report each machine of the other side offline; each report would make its own
`offline` row (keep/store/fleet_record.py). Here, the fleet's down verdict on a machine
first asks: did enough others drop with it (reports of down within the reporter's
partition window of its outage's first report, on machines the fleet still calls up)?
Then one `partition` row names them all, and each joins it as its own verdict turns down
-- no `offline` row each. Its members coming back end it with one `partition_end` (when
fewer than its minimum are still down), without a `recovery` row each; one still down
then, and back within a window of the end, came back with it.

The same rule as the single observer's (decide/partition.py): at least
`partitionMinPeers`, and `partitionFraction` of the fleet. The reporter sends its
parameters with its report; a report without them (an older daemon, an import) is judged
alone. Runs in the caller's transaction, under the fleet-event lock (fleet_record.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from clawd.core.model import EventType, Incident
from clawd.keep.store.fleet_sql import INSERT_FLEET_INCIDENT as INSERT_ROW
from clawd.keep.store.migrations import Conn

# What a reporter sends with an `offline` report, for this judgement (stripped from rows).
PARAMETERS = ("partition_window_s", "partition_min_peers", "partition_fraction")
# A member still down when its partition ended, back within this many windows of the end,
# came back with it (its observers reconnect with a backoff of their own).
BACK_WITH_IT_WINDOWS = 5
NAMES_IN_DETAILS = 50

OPEN_PARTITION = """
SELECT id, started, window_seconds, minimum, members, down, incident_id
FROM fleet_partition WHERE ended IS NULL
FOR UPDATE
"""
PARTITION_OF = """
SELECT id, started, ended, window_seconds, minimum, members, down, incident_id,
       end_incident_id
FROM fleet_partition WHERE incident_id = $1
ORDER BY id DESC LIMIT 1
FOR UPDATE
"""
FLEET_SIZE = "SELECT count(*) FROM fleet_verdict"
# Machines the fleet still calls up whose observers began to report them down within the
# window of this outage's first report: they dropped together with it.
COMPANIONS = """
SELECT DISTINCT e.target
FROM observer_evidence e
JOIN fleet_verdict v ON v.gateway_id = e.target
WHERE e.target <> $1 AND v.verdict = 'up' AND e.event_type = 'offline'
  AND e.incident_id IS NULL AND e."timestamp" > v.since
  AND e."timestamp" BETWEEN $2::timestamptz - make_interval(secs => $3)
                        AND $2::timestamptz + make_interval(secs => $3)
"""
NAMES = "SELECT gateway_id, name FROM fleet_instances WHERE gateway_id = ANY($1::text[])"
OPEN = """
INSERT INTO fleet_partition (started, window_seconds, minimum, members, down, incident_id)
VALUES ($1, $2, $3, $4::text[], ARRAY[$5::text], $6)
"""
JOIN_PARTITION = """
UPDATE fleet_partition
SET down = CASE WHEN $2 = ANY(down) THEN down ELSE array_append(down, $2) END,
    members = CASE WHEN $2 = ANY(members) THEN members ELSE array_append(members, $2) END
WHERE id = $1
RETURNING members
"""
MEMBERS_SHOWN = """
UPDATE incident_log
SET details = coalesce(details, '{}') || jsonb_build_object('peers', $2::int, 'members', $3::jsonb)
WHERE id = $1
"""
SET_DOWN = "UPDATE fleet_partition SET down = $2::text[] WHERE id = $1"
ONE_MORE_BACK = """
UPDATE incident_log
SET details = jsonb_set(details, '{back}', to_jsonb(coalesce((details ->> 'back')::int, 0) + 1))
WHERE id = $1
"""
END = """
UPDATE fleet_partition SET ended = $2, down = $3::text[], end_incident_id = $4 WHERE id = $1
"""


@dataclass(frozen=True)
class Rules:
    window: timedelta
    min_peers: int
    fraction: float


def rules_of(incident: Incident) -> Rules | None:
    """The reporter's partition parameters, or None when it sent none."""
    window = incident.details.get("partition_window_s")
    min_peers = incident.details.get("partition_min_peers")
    fraction = incident.details.get("partition_fraction")
    if not isinstance(window, int | float) or window <= 0:
        return None
    if not isinstance(min_peers, int) or min_peers < 2:
        return None
    if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        return None
    return Rules(timedelta(seconds=float(window)), min_peers, float(fraction))


async def _names(conn: Conn, members: list[str]) -> list[str]:
    rows = await conn.fetch(NAMES, members)
    named = {str(r["gateway_id"]): str(r["name"]) for r in rows}
    return sorted(named.get(g, g) for g in members)[:NAMES_IN_DETAILS]


async def went_down_with(
    conn: Conn, report: Incident, began: datetime, details: dict[str, Any]
) -> tuple[int, bool] | None:
    """The partition row `report.gateway_id` goes down with, and whether this report
    opened it; None: an outage of its own (its `offline` row is the caller's). `began`:
    the first report of this outage; `details`: the fleet row's details so far
    (witnesses, quorum)."""
    rules = rules_of(report)
    if rules is None:
        return None
    target = report.gateway_id
    current = await conn.fetchrow(OPEN_PARTITION)
    if current is not None:
        window = timedelta(seconds=float(current["window_seconds"]))
        if began > current["started"] + window:
            return None  # a later outage while a partition lasts: its own
        members = list(await conn.fetchval(JOIN_PARTITION, current["id"], target))
        await conn.execute(MEMBERS_SHOWN, current["incident_id"], len(members), json.dumps(members))
        return int(current["incident_id"]), False
    window_s = rules.window.total_seconds()
    companions = [str(r["target"]) for r in await conn.fetch(COMPANIONS, target, began, window_s)]
    size = int(await conn.fetchval(FLEET_SIZE))
    minimum = max(rules.min_peers, math.ceil(rules.fraction * size))
    if 1 + len(companions) < minimum:
        return None
    members = sorted({target, *companions})
    row: dict[str, Any] = {
        "peers": len(members),
        "of": size,
        "members": members,
        "names": await _names(conn, members),
        "window_seconds": window_s,
        "scope": "the whole fleet" if len(members) >= size else "part of the fleet",
        "witnesses": details.get("witnesses", []),
    }
    incident_id = await conn.fetchval(
        INSERT_ROW,
        str(report.details["observer"]),
        EventType.PARTITION.value,
        json.dumps(row),
        report.timestamp,
        report.key,
    )
    if incident_id is None:
        return None  # this report's row exists already (a replay): judged alone
    await conn.execute(OPEN, began, window_s, minimum, members, target, incident_id)
    return int(incident_id), True


async def came_back_from(conn: Conn, report: Incident, down_row: int) -> tuple[int, bool] | None:
    """`report` (an up) on a machine whose down verdict is the row `down_row`: if that is
    a partition's, the row its up links to and whether this report wrote it (the
    `partition_end`); None: not a partition's, or back long after it ended (the caller
    writes a `recovery`)."""
    part = await conn.fetchrow(PARTITION_OF, down_row)
    if part is None:
        return None
    target = report.gateway_id
    down = [g for g in part["down"] if g != target]
    window = timedelta(seconds=float(part["window_seconds"]))
    if part["ended"] is not None:
        await conn.execute(SET_DOWN, part["id"], down)
        end_id = part["end_incident_id"]
        if report.timestamp <= part["ended"] + BACK_WITH_IT_WINDOWS * window and end_id:
            await conn.execute(ONE_MORE_BACK, end_id)
            return int(end_id), False  # back with the others
        return None
    if len(down) >= part["minimum"]:
        await conn.execute(SET_DOWN, part["id"], down)
        return int(part["incident_id"]), False  # the partition lasts
    members = list(part["members"])
    observer = str(report.details["observer"])
    details = {
        "duration_seconds": round((report.timestamp - part["started"]).total_seconds(), 1),
        "peers": len(members),
        "back": len(members) - len(down),
        "still_down": await _names(conn, down) if down else [],
        "partition_id": int(part["incident_id"]),
        "witnesses": [{"observer": observer, "first_seen": report.timestamp.isoformat()}],
    }
    end_id = await conn.fetchval(
        INSERT_ROW,
        observer,
        EventType.PARTITION_END.value,
        json.dumps(details),
        report.timestamp,
        report.key,
    )
    if end_id is None:
        return None
    await conn.execute(END, part["id"], report.timestamp, down, end_id)
    return int(end_id), True
