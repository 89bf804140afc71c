"""Issue 16: the acting leader's feed from incident_log to its outbox (alerts/feed.py),
on a real PostgreSQL: each row once, silenced rows flagged and not told, history not
told, and an outbox that cannot take rows leaves them to the next round."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from helpers_pg import connect
from pgserver import PgDatabase

from clawd.core.model import Incident
from clawd.keep.lease import LeaseRound
from clawd.keep.store.migrations import migrate
from clawd.serve.alerts.feed import IncidentFeed
from clawd.serve.alerts.silences import PG_INSERT

HELD = LeaseRound(frozenset(), held=True, leaderless=False)
INSERT = """
INSERT INTO incident_log (gateway_id, event_type, details, "timestamp", client_key)
VALUES ($1, $2, $3::jsonb, $4, gen_random_uuid()) RETURNING id
"""


async def test_each_row_once_silenced_flagged_history_untold_and_a_failed_outbox_retried(
    pg_db: PgDatabase,
) -> None:
    offered: list[Incident] = []
    failing = [True]

    async def offer(incidents: Sequence[Incident]) -> None:
        if failing[0]:
            failing[0] = False
            raise OSError(28, "No space left on device")
        offered.extend(incidents)

    feed = IncidentFeed(offer)
    now = datetime.now(UTC)
    async with connect(pg_db) as conn:
        await migrate(conn)
        await conn.execute(
            PG_INSERT, "s-1", "m7", now - timedelta(hours=1), now + timedelta(hours=1),
            "reboot", "ops@a", now,
        )  # fmt: skip
        ids = {
            name: await conn.fetchval(INSERT, gateway, event, json.dumps({"name": gateway}), at)
            for name, gateway, event, at in (
                ("down", "m5", "offline", now),
                ("planned", "m7", "offline", now),
                ("history", "m6", "offline", now - timedelta(hours=2)),
            )
        }
        await feed.ride(conn, HELD)  # the outbox fails: nothing marked, no error out
        untold = await conn.fetchval("SELECT count(*) FROM incident_log WHERE notified_at IS NULL")
        assert untold == 3 and offered == []

        await feed.ride(conn, HELD)
        assert [(i.gateway_id, i.event_type.value) for i in offered] == [("m5", "offline")]
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM incident_log")}
        assert all(r["notified_at"] is not None for r in rows.values())
        assert json.loads(rows[ids["planned"]]["details"])["silenced"] == "s-1"
        assert "silenced" not in json.loads(rows[ids["history"]]["details"])

        await feed.ride(conn, HELD)  # nothing new: nothing told again
        await feed.ride(conn, LeaseRound(frozenset(), held=False, leaderless=False))
        assert len(offered) == 1
