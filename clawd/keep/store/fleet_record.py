"""One incident per real event when the whole fleet writes to one database.

Every machine of a postgres fleet watches the others, so a machine that goes offline is
seen by every observer. Each observer's report is kept as evidence (`observer_evidence`);
the report that changes the fleet's verdict for that machine (`fleet_verdict`: up or
down) writes the one `incident_log` row, and later reports of the same verdict add their
observer to that row's `witnesses`. Down needs agreement: a majority of the observers
(see `quorum`), so one observer that cannot reach a machine is evidence, not a fleet
outage; up needs one report (a machine that answered is up). A row lock on the verdict
orders concurrent observers; a report older than the verdict (a spool replayed late) is
evidence only.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from clawd.core.lock_ids import FLEET_EVENT_LOCK_ID, LEASE_SESSIONS, lease_session_name
from clawd.core.model import EventType, Incident
from clawd.keep.store import fleet_partition
from clawd.keep.store.fleet_sql import INSERT_FLEET_INCIDENT
from clawd.keep.store.migrations import Conn

# The events of a machine's reachability: everything else is recorded as it comes.
VERDICT_OF = {EventType.OFFLINE: "down", EventType.ONLINE: "up", EventType.RECOVERY: "up"}
# An observer's own finding, kept as its evidence and no fleet event: `unreachable` says
# that it alone cannot reach a machine that other peers reach.
EVIDENCE_ONLY = frozenset({EventType.UNREACHABLE})
# What every machine of a JSON fleet recorded for itself, sent in as its history when the
# fleet moves to the shared database (or with `clawd db import-json`): one row per real
# change there too -- the same new leader in the same epoch. Live, only the lease holder
# records a leader change, once.
HISTORY_EVENTS = frozenset({EventType.LEADER_CHANGE})
# Every incident_log row is one NOTIFY on this channel (a trigger, migration 007): the
# fleet's incident stream, one message per real event, for whatever tells people.
INCIDENT_CHANNEL = "clawd_incident"
# Witnesses named in one incident: enough to show agreement, bounded for a large fleet
# (every observer is still in observer_evidence).
MAX_WITNESSES = 16

INSERT_EVIDENCE = """
INSERT INTO observer_evidence (observer, target, event_type, details, "timestamp", client_key)
VALUES ($1, $2, $3, $4::jsonb, $5, $6)
ON CONFLICT (client_key) DO NOTHING
RETURNING id
"""
ENSURE_VERDICT = """
INSERT INTO fleet_verdict (gateway_id, verdict, since) VALUES ($1, $2, '-infinity')
ON CONFLICT (gateway_id) DO NOTHING
"""
LOCK_VERDICT = """
SELECT verdict, since, previous_since, incident_id FROM fleet_verdict
WHERE gateway_id = $1 FOR UPDATE
"""
ADD_WITNESS = """
UPDATE incident_log
SET details = jsonb_set(coalesce(details, '{}'), '{witnesses}',
                        coalesce(details -> 'witnesses', '[]') || $2::jsonb)
WHERE id = $1
  AND jsonb_array_length(coalesce(details -> 'witnesses', '[]')) < $3
  AND NOT coalesce(details -> 'witnesses', '[]') @> $4::jsonb
"""
SET_VERDICT = """
UPDATE fleet_verdict
SET previous_since = NULLIF(since, '-infinity'), verdict = $2, since = $3, incident_id = $4
WHERE gateway_id = $1
"""
LINK_EVIDENCE = "UPDATE observer_evidence SET incident_id = $2 WHERE id = $1"
# The machine's peer_status row takes the new verdict at once (migration 008's rule), not
# at its observers' next peer write.
FOLLOW_VERDICT = """
UPDATE peer_status SET status = clawd_fleet_status(gateway_id, status)
WHERE gateway_id = $1 AND status IS DISTINCT FROM clawd_fleet_status(gateway_id, status)
"""
# The observers that say `target` is down since the verdict (no up from them after it),
# each with the first report of this outage, earliest first.
DOWN_WITNESSES = """
SELECT e.observer, min(e."timestamp") AS first_seen
FROM observer_evidence e
WHERE e.target = $1 AND e."timestamp" > $2 AND e.event_type = 'offline'
  AND NOT EXISTS (
      SELECT 1 FROM observer_evidence u
      WHERE u.target = e.target AND u.observer = e.observer
        AND u.event_type <> 'offline' AND u."timestamp" > e."timestamp")
GROUP BY e.observer
ORDER BY first_seen, e.observer
"""
# The instances running clawd on this database (each holds a lease session), but one.
OBSERVER_SESSIONS = f"""
SELECT count(DISTINCT application_name) FROM pg_stat_activity
WHERE {LEASE_SESSIONS} AND application_name <> $1
"""  # noqa: S608 - a fixed condition, no input
# Is the target's own clawd talking to this database right now? Its lease session runs a
# query every ping interval, so a session idle for longer is a dead machine's (a powered-off
# machine's session lingers until TCP gives up on it; its queries stop at once).
TARGET_ALIVE = """
SELECT EXISTS (
    SELECT 1 FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = $1
      AND state_change > now() - make_interval(secs => $2))
"""
REPORTER_ONLY = frozenset({"observer", "alive_window_s", *fleet_partition.PARAMETERS})
# Without the reporter's interval (an older report): the default interval's worth.
ALIVE_WINDOW_DEFAULT_S = 30.0
# Outages not decided yet: the latest unlinked `offline` report per machine the fleet
# still calls up, within the horizon (older ones were answered by an up since, or judged).
PENDING_DOWNS = """
SELECT DISTINCT ON (e.target) e.id, e.target, e.details, e."timestamp", e.client_key
FROM fleet_verdict v
JOIN observer_evidence e ON e.target = v.gateway_id
WHERE (v.verdict = 'up' OR v.incident_id IS NULL)  -- up, or no verdict recorded yet
  AND e.event_type = 'offline' AND e.incident_id IS NULL
  AND e."timestamp" > v.since AND e."timestamp" > now() - make_interval(secs => $1)
ORDER BY e.target, e."timestamp" DESC
"""
PENDING_HORIZON_S = 900.0
ONE_JUDGEMENT_AT_A_TIME = "SELECT pg_advisory_xact_lock($1)"
RECORDED_AS_IT_CAME = "SELECT EXISTS (SELECT 1 FROM incident_log WHERE client_key = $1)"
# The row of the same leader change: the same new leader in the same epoch (a change
# recorded without an epoch: the same new leader within the window).
SAME_LEADER_CHANGE = """
SELECT id FROM incident_log
WHERE event_type = 'leader_change' AND details ->> 'new' IS NOT DISTINCT FROM $1
  AND CASE WHEN $2::text IS NULL
           THEN "timestamp" BETWEEN $3::timestamptz - make_interval(secs => $4)
                                AND $3::timestamptz + make_interval(secs => $4)
           ELSE details ->> 'epoch' = $2::text END
ORDER BY abs(extract(epoch FROM "timestamp" - $3::timestamptz)), id
LIMIT 1
"""
SAME_CHANGE_WINDOW_S = 60.0
LINK_DOWN_EVIDENCE = """
UPDATE observer_evidence SET incident_id = $3
WHERE target = $1 AND "timestamp" >= $2 AND event_type = 'offline' AND incident_id IS NULL
"""


def observed_by(incident: Incident, observer: str, *, history: bool = False) -> Incident:
    """The report as the shared database takes it: a reachability event names the machine
    that saw it (so several observers' reports of one event make one row); others as they
    are. Live writes, the JSON history sent at a backend switch and `clawd db import-json`
    all pass through here (`history`: the JSON history, whose leader changes each machine
    recorded for itself)."""
    event = incident.event_type
    stamped = event in VERDICT_OF or event in EVIDENCE_ONLY
    if "observer" in incident.details or not (stamped or (history and event in HISTORY_EVENTS)):
        return incident
    return dataclasses.replace(incident, details={**incident.details, "observer": observer})


def is_fleet_event(incident: Incident) -> bool:
    """True for the reports that several observers make of one real event (and for an
    observer's own findings: evidence only)."""
    event = incident.event_type
    return (event in VERDICT_OF or event in EVIDENCE_ONLY or event in HISTORY_EVENTS) and (
        isinstance(incident.details.get("observer"), str)
    )


def _witness(observer: str, at: datetime) -> dict[str, str]:
    return {"observer": observer, "first_seen": at.isoformat()}


def quorum(incident: Incident, sessions: int) -> int:
    """Reports of down the fleet needs: a majority of its observers. The reporter counts
    itself and the verified peers it sees up (`details.observers`); only those that run
    clawd on this database observe (`sessions`: lease sessions, the target's aside), and a
    session of a machine that lost power may linger, so the smaller count is the fleet's.
    """
    counted = incident.details.get("observers")
    observers = counted if isinstance(counted, int) and counted > 0 else 1
    return min(observers, max(sessions, 1)) // 2 + 1


async def _alive(conn: Conn, incident: Incident) -> bool:
    window = incident.details.get("alive_window_s")
    if not isinstance(window, int | float) or window <= 0:
        window = ALIVE_WINDOW_DEFAULT_S
    target = lease_session_name(incident.gateway_id)
    return bool(await conn.fetchval(TARGET_ALIVE, target, float(window)))


def _fleet_incident(
    incident: Incident, observer: str, was: str, since: datetime
) -> tuple[EventType, dict[str, Any]]:
    """The row the fleet records: back up after a fleet-wide `down` is a recovery, whoever
    reports it first (an observer that started during the outage says `online`)."""
    # The reporter's own parameters stay in its evidence, not in the fleet's row.
    details = {k: v for k, v in incident.details.items() if k not in REPORTER_ONLY}
    details["witnesses"] = [_witness(observer, incident.timestamp)]
    event = incident.event_type
    if was == "down" and VERDICT_OF[event] == "up":
        event = EventType.RECOVERY
        details.setdefault(
            "downtime_seconds", round((incident.timestamp - since).total_seconds(), 1)
        )
    return event, details


async def record_fleet_event(conn: Conn, incident: Incident) -> None:
    """Evidence always; the incident row only when the fleet's verdict changes. In the
    caller's transaction; idempotent (a replayed report finds its evidence and stops)."""
    if await conn.fetchval(RECORDED_AS_IT_CAME, incident.key):
        # Written as a row of its own before (a leader change a live daemon recorded,
        # sent again with the JSON history; a database from before evidence was kept).
        return
    evidence_id = await conn.fetchval(
        INSERT_EVIDENCE,
        str(incident.details["observer"]),
        incident.gateway_id,
        incident.event_type.value,
        json.dumps(incident.details),
        incident.timestamp,
        incident.key,
    )
    if evidence_id is None or incident.event_type in EVIDENCE_ONLY:
        return  # replayed (this report was recorded before), or evidence only
    if incident.event_type in HISTORY_EVENTS:
        await _same_change(conn, incident, int(evidence_id))
        return
    await _judge(conn, incident, int(evidence_id))


async def _same_change(conn: Conn, incident: Incident, evidence_id: int) -> None:
    """A leader change from a machine's JSON history: the row another machine's history
    made of it gets a witness; the first report of it makes the row."""
    await conn.execute(ONE_JUDGEMENT_AT_A_TIME, FLEET_EVENT_LOCK_ID)
    observer = str(incident.details["observer"])
    new, epoch = incident.details.get("new"), incident.details.get("epoch")
    witness = json.dumps([_witness(observer, incident.timestamp)])
    same = await conn.fetchval(
        SAME_LEADER_CHANGE,
        None if new is None else str(new),
        None if epoch is None else str(epoch),
        incident.timestamp,
        SAME_CHANGE_WINDOW_S,
    )
    if same is None:
        details = {k: v for k, v in incident.details.items() if k not in REPORTER_ONLY}
        details["witnesses"] = json.loads(witness)
        same = await conn.fetchval(
            INSERT_FLEET_INCIDENT,
            incident.gateway_id,
            incident.event_type.value,
            json.dumps(details),
            incident.timestamp,
            incident.key,
        )
    else:
        observer_only = json.dumps([{"observer": observer}])
        await conn.execute(ADD_WITNESS, same, witness, MAX_WITNESSES, observer_only)
    if same is not None:
        await conn.execute(LINK_EVIDENCE, evidence_id, same)


async def settle_pending_downs(conn: Conn) -> int:
    """Judge again the outages whose reports found the machine's clawd still on the
    database (a powered-off machine's session lingers until TCP gives up, its last query
    ages): each observer reports a change once, so the fleet decides here, on the leader's
    lease round, without a new report. How many `offline` rows it wrote."""
    decided = 0
    for row in await conn.fetch(PENDING_DOWNS, PENDING_HORIZON_S):
        report = Incident(
            gateway_id=str(row["target"]),
            event_type=EventType.OFFLINE,
            details=json.loads(row["details"]) if row["details"] else {},
            timestamp=row["timestamp"],
            key=row["client_key"],
        )
        async with conn.transaction():
            decided += await _judge(conn, report, int(row["id"]))
    return decided


async def _judge(conn: Conn, incident: Incident, evidence_id: int) -> int:
    """Does this report change the fleet's verdict? 1 if it wrote the incident row."""
    # Before any verdict row: a partition's judgement reads and writes several machines'.
    await conn.execute(ONE_JUDGEMENT_AT_A_TIME, FLEET_EVENT_LOCK_ID)
    observer = str(incident.details["observer"])
    target, verdict = incident.gateway_id, VERDICT_OF[incident.event_type]
    await conn.execute(ENSURE_VERDICT, target, verdict)
    row = await conn.fetchrow(LOCK_VERDICT, target)
    assert row is not None  # ENSURE_VERDICT made it
    was, since, current = str(row["verdict"]), row["since"], row["incident_id"]
    if was == verdict and current is not None:
        began = row["previous_since"]  # the other verdict before this one, if any
        if began is not None and incident.timestamp <= began:
            return 0  # a report of an earlier period of this verdict: evidence only
        await conn.execute(
            ADD_WITNESS,
            current,
            json.dumps([_witness(observer, incident.timestamp)]),
            MAX_WITNESSES,
            json.dumps([{"observer": observer}]),
        )
        await conn.execute(LINK_EVIDENCE, evidence_id, current)
        return 0
    if current is not None and incident.timestamp <= since:
        return 0  # older than the fleet's verdict: a late replay, evidence only
    if verdict == "up" and was == "down" and current is not None:
        linked = await fleet_partition.came_back_from(conn, incident, int(current))
        if linked is not None:
            return await _decided(conn, incident, evidence_id, linked)
    event, details = _fleet_incident(incident, observer, was if current is not None else "", since)
    outage_began = incident.timestamp
    if verdict == "down":
        sessions = await conn.fetchval(OBSERVER_SESSIONS, lease_session_name(target))
        needed = details["quorum"] = quorum(incident, int(sessions))
        witnesses = await conn.fetch(DOWN_WITNESSES, target, since)
        if len(witnesses) < needed:
            return 0  # not (yet) the fleet's verdict: unreachable from these observers only
        if await _alive(conn, incident):
            # Its clawd answers the database: a cut between machines (or its SSH), not a
            # machine that is down. Evidence only, judged again (settle_pending_downs).
            return 0
        named = witnesses[:MAX_WITNESSES]
        details["witnesses"] = [_witness(str(w["observer"]), w["first_seen"]) for w in named]
        outage_began = witnesses[0]["first_seen"]
        partition = await fleet_partition.went_down_with(conn, incident, outage_began, details)
        if partition is not None:
            return await _decided(conn, incident, evidence_id, partition, outage_began)
    incident_id = await conn.fetchval(
        INSERT_FLEET_INCIDENT,
        target,
        event.value,
        json.dumps(details),
        incident.timestamp,
        incident.key,
    )
    return await _decided(conn, incident, evidence_id, (incident_id, True), outage_began)


async def _decided(
    conn: Conn,
    incident: Incident,
    evidence_id: int,
    row: tuple[int | None, bool],
    outage_began: datetime | None = None,
) -> int:
    """The fleet's new verdict on the machine, recorded by the incident row `row` (and
    whether this report wrote it: the count returned)."""
    target, verdict = incident.gateway_id, VERDICT_OF[incident.event_type]
    incident_id, wrote = row
    await conn.execute(SET_VERDICT, target, verdict, incident.timestamp, incident_id)
    await conn.execute(FOLLOW_VERDICT, target)
    await conn.execute(LINK_EVIDENCE, evidence_id, incident_id)
    if verdict == "down":
        await conn.execute(LINK_DOWN_EVIDENCE, target, outage_began, incident_id)
    return 1 if wrote else 0
