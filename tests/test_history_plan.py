"""The report's queries read ping_history through an index, never a sequential scan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from helpers_pg import connect
from pgserver import PgDatabase

from clawd.keep.history import hourly, queries
from clawd.keep.history.collect import cut
from clawd.keep.history.hourly import Segment
from clawd.keep.history.timespec import Window
from clawd.keep.store.migrations import migrate

ROWS = 1_000_000
PEERS = 100
DAYS = 30
# One ping of each of PEERS peers every DAYS * 86400 * PEERS / ROWS seconds (~4.3 min).
FILL = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms)
SELECT 'gw-self', 'gw-' || lpad((g % $2)::text, 3, '0'), g % 97 <> 0,
       $3::timestamptz + (g / $2) * ($4::float8 * interval '1 second'),
       CASE WHEN g % 97 <> 0 THEN 5 + g % 200 END
FROM generate_series(0, $1 - 1) AS g
"""


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def _plan(conn: Any, sql: str, *args: Any) -> list[dict[str, Any]]:
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return list(_nodes(json.loads(raw)[0]["Plan"]))


async def test_one_peer_one_day_uses_the_index(pg_db: PgDatabase) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=DAYS)
    step = DAYS * 86_400 * PEERS / ROWS
    async with connect(pg_db) as conn:
        await migrate(conn)
        await conn.execute(FILL, ROWS, PEERS, start, step)
        # VACUUM too: it sets the visibility map, as autovacuum does for an insert-only
        # table, without which index-only scans are not chosen. FREEZE, because a plain
        # VACUUM right after the INSERT may still see its transaction as too recent.
        await conn.execute("VACUUM (FREEZE, ANALYZE) ping_history")
        day = (now - timedelta(days=1), now)
        stats = await _plan(conn, queries.PEER_STATS, *day, now, timedelta(0), ["gw-042"])
        every = [f"gw-{n:03d}" for n in range(PEERS)]
        fleet = await _plan(conn, queries.PEER_STATS, *day, now, timedelta(0), every)
        sample = await _plan(conn, queries.GAP_SAMPLE, *day, "gw-042", "gw-042")
        # The hourly path (migration 004), one peer, nothing rolled yet: every hour of
        # the day and both edges computed live, one range scan each.
        pieces = cut(Window(*day), now)
        edges = [Segment("gw-042", *e) for e in pieces.edges]
        assert pieces.full is not None
        whole = [hourly.whole_hour("gw-042", h) for h in _hours(*pieces.full)]
        live = await _plan(conn, hourly.SEGMENTS, *hourly.params(edges + whole))
        peers = await _plan(conn, queries.PEERS, *day, "gw-042", "gw-042")
        # Rows above a recent watermark: a range of the primary key, not the table.
        mark = await conn.fetchval("SELECT max(id) - 1000 FROM ping_history")
        unrolled = await _plan(conn, queries.UNROLLED, mark, *pieces.full, "gw-042")
    checked = (
        ("one peer", stats),
        ("every peer", fleet),
        ("sample", sample),
        ("hourly segments", live),
        ("hourly peers", peers),
        ("unrolled", unrolled),
    )
    for name, nodes in checked:
        scans = [(n["Node Type"], n.get("Index Name")) for n in nodes if "Relation Name" in n]
        assert scans, name
        assert all(kind != "Seq Scan" for kind, _ in scans), (name, scans)
    for name, nodes in (("one peer", stats), ("every peer", fleet), ("hourly segments", live)):
        kinds = {(n["Node Type"], n.get("Index Name")) for n in nodes if "Relation Name" in n}
        assert kinds == {("Index Only Scan", "idx_ping_history_target_ts_cover")}, (name, nodes)
        assert not [n for n in nodes if n["Node Type"] == "Sort"], name  # the index sorts


def _hours(first: datetime, last: datetime) -> list[datetime]:
    return [first + timedelta(hours=i) for i in range(int((last - first) / timedelta(hours=1)))]
