"""The fleet's notifications with backend postgres: the acting leader tells of every
incident_log row once, whoever wrote it.

It rides on the leader lease's session (keep/lease.py): every incident_log row NOTIFYs
`clawd_incident` (migration 007), which wakes the lease; on each round the holder takes
the rows not notified yet (migration 010), hands them to its outbox and marks them, in
one transaction -- so one machine sends each, a new leader goes on where the last one
stopped, and a crash between the outbox and the commit sends a row again at most (the
outbox drops a key it holds). Rows older than `MAX_AGE` (history sent in at a backend
switch, a fleet that was leaderless for long) are marked, not sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import asyncpg
import structlog

from clawd.core.errors import ClawdError
from clawd.core.model import EventType, Incident, utcnow
from clawd.keep.lease import LeaseRound
from clawd.keep.store.fleet_record import INCIDENT_CHANNEL
from clawd.serve.alerts.silences import PG_CURRENT, from_row, silencing

log = structlog.get_logger("clawd.serve.alerts")

BATCH = 500
MAX_AGE = timedelta(minutes=15)
NOT_NOTIFIED = """
SELECT id, gateway_id, event_type, details, "timestamp", client_key,
       "timestamp" < now() - make_interval(secs => $2) AS stale
FROM incident_log
WHERE notified_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
MARK = "UPDATE incident_log SET notified_at = now() WHERE id = ANY($1::int[])"
# Recorded all the same, and said to be silenced (and by which silence).
FLAG_SILENCED = """
UPDATE incident_log
SET details = coalesce(details, '{}') || jsonb_build_object('silenced', $2::text)
WHERE id = $1
"""
_EVENTS = frozenset(e.value for e in EventType)
ROW_KEYS = uuid.UUID("6f0d4a52-7a43-4c1e-9d5e-2b9c0f6e1a77")


class _OutboxFailed(Exception):
    """The outbox could not take the rows (raised inside the transaction: rolled back)."""


class IncidentFeed:
    """On the lease holder: incident_log rows to the outbox (`offer`), each once."""

    def __init__(self, offer: Callable[[Sequence[Incident]], Awaitable[None]]) -> None:
        self._offer = offer

    async def attach(self, conn: asyncpg.Connection, wake: Callable[[], None]) -> None:
        await conn.add_listener(INCIDENT_CHANNEL, lambda *_: wake())

    async def ride(self, conn: asyncpg.Connection, seen: LeaseRound) -> None:
        if not seen.held:
            return
        try:
            await self._take(conn)
        except _OutboxFailed as exc:
            # The rows stay untold (rolled back): taken again at the next round.
            log.warning("alerts_outbox_failed", error=str(exc.__cause__))

    async def _take(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            rows = await conn.fetch(NOT_NOTIFIED, BATCH, MAX_AGE.total_seconds())
            if not rows:
                return
            fresh = [
                (int(r["id"]), _incident(r))
                for r in rows
                if not r["stale"] and r["event_type"] in _EVENTS
            ]
            current = [from_row(r) for r in await conn.fetch(PG_CURRENT, utcnow())]
            told: list[Incident] = []
            for row_id, incident in fresh:
                silence = silencing(current, incident)
                if silence is None:
                    told.append(incident)
                    continue
                await conn.execute(FLAG_SILENCED, row_id, silence.id)
                log.info(
                    "alerts_silenced",
                    gateway=incident.gateway_id,
                    incident=incident.event_type.value,
                    silence=silence.id,
                )
            if told:
                try:
                    await self._offer(told)
                except (OSError, ClawdError) as exc:  # the home's disk: not the lease's fault
                    raise _OutboxFailed from exc
            await conn.execute(MARK, [int(r["id"]) for r in rows])
        stale = len(rows) - len(fresh)
        log.debug("alerts_feed_taken", rows=len(rows), offered=len(told), stale=stale)


def _incident(row: asyncpg.Record) -> Incident:
    details = json.loads(row["details"]) if row["details"] else {}
    return Incident(
        gateway_id=str(row["gateway_id"]),
        event_type=EventType(row["event_type"]),
        details=details if isinstance(details, dict) else {},
        timestamp=row["timestamp"],
        # A row written without a key (by hand, by an old clawd): one made from its id.
        key=row["client_key"] or uuid.uuid5(ROW_KEYS, str(row["id"])),
    )
