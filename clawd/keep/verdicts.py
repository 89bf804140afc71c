"""The fleet's verdicts on the lease's session: read from the shared record for the peers
this machine does not probe (decide/observing.py), and on the leader the outages that
still wait for a decision.

It rides on the leader lease's session (keep/lease.py): one session per daemon for the
fleet's shared state, not one more. Every incident_log row NOTIFYs `clawd_incident`
(migration 007); an incident that can change a verdict wakes the lease, whose round then
reads `fleet_verdict` -- within one interval at the latest, since the lease reads every
interval and the verdicts are read again every few rounds besides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import asyncpg
import structlog

from clawd.core.model import utcnow
from clawd.core.observations import Observation, Verdict, VerdictsSeen
from clawd.keep.lease import LeaseRound
from clawd.keep.store.fleet_record import INCIDENT_CHANNEL, VERDICT_OF, settle_pending_downs

log = structlog.get_logger("clawd.keep.verdicts")

READ_VERDICTS = "SELECT gateway_id, verdict, since FROM fleet_verdict"
# Read again after this many lease rounds without a notification (a NOTIFY sent while
# this session was reconnecting is not delivered to it).
ROUNDS_BETWEEN_READS = 6
_VERDICT_EVENTS = frozenset(event.value for event in VERDICT_OF)


class FleetVerdicts:
    """Reads the verdicts on the lease's session and hands changes to the keeper."""

    def __init__(self, emit: Callable[[Observation], None], wanted: Callable[[], bool]) -> None:
        self._emit = emit
        self._wanted = wanted  # k observers per machine: only then are verdicts needed
        self._due = True
        self._rounds = 0
        self._verdicts: dict[str, Verdict] = {}
        self._last: tuple[dict[str, Verdict], frozenset[str]] | None = None
        self._wake: Callable[[], None] = lambda: None

    async def attach(self, conn: asyncpg.Connection, wake: Callable[[], None]) -> None:
        """A new lease session: listen for incidents on it, and read at its first round."""
        self._wake = wake
        self._due = True
        await conn.add_listener(INCIDENT_CHANNEL, self._notified)

    async def ride(self, conn: asyncpg.Connection, seen: LeaseRound) -> None:
        """After a lease round: read the verdicts if an incident changed them or it is
        time; report them with the round's sessions (who can observe) when either changed."""
        self._rounds += 1
        if not self._wanted():
            self._last = None  # wanted again (a reload): report afresh at once
            return
        if self._due or self._rounds >= ROUNDS_BETWEEN_READS or self._last is None:
            self._due, self._rounds = False, 0
            rows = await conn.fetch(READ_VERDICTS)
            self._verdicts = {
                str(r["gateway_id"]): Verdict(r["verdict"] == "up", _since(r["since"]))
                for r in rows
            }
        now_seen = (self._verdicts, seen.sessions)
        if now_seen != self._last:
            self._last = now_seen
            self._emit(VerdictsSeen(utcnow(), self._verdicts, seen.sessions))

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        try:
            event = json.loads(str(payload)).get("event_type")
        except (ValueError, AttributeError):
            event = None  # not ours to judge: read anyway
        if event is None or event in _VERDICT_EVENTS:
            self._due = True
            self._wake()


def _since(value: object) -> datetime:
    # '-infinity' (a verdict row made before its first report) comes back as datetime.min.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return datetime.min.replace(tzinfo=utcnow().tzinfo)


class PendingOutages:
    """On the leader: outages whose reports found the machine's clawd still querying the
    database are judged again every lease round (fleet_record.settle_pending_downs), so a
    powered-off machine whose session lingers is offline once its queries stop. On every
    instance while nobody renews the lease: the leader's own outage (its machine lost
    power, or a partition cut it off) is decided without it (judgements are serialised in
    the database: the first decides, the others find it done)."""

    async def attach(self, conn: asyncpg.Connection, wake: Callable[[], None]) -> None:
        return None

    async def ride(self, conn: asyncpg.Connection, seen: LeaseRound) -> None:
        if not (seen.held or seen.leaderless):
            return
        decided = await settle_pending_downs(conn)
        if decided:
            log.info("fleet_outages_decided", offline=decided)
