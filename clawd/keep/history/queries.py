"""The history SQL (parameterised only) and the calls that run it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from clawd.keep.history.latency import BUCKETS
from clawd.keep.store.migrations import Conn

# Rows of one peer come out of the covering index (migrations/003) already in
# (target_gateway, "timestamp") order, so the window needs no sort and no heap.
# $1 start, $2 end, $3 min(end, now), $4 spans longer than this interval are also
# returned one by one so that the caller can cap them exactly (see report.py),
# $5 the gateways to cover: `= ANY` probes the index once per peer, bounded by time on
# both ends, and still yields (peer, time) order.
PEER_STATS = """
SELECT gateway_id,
       count(*) AS pings,
       count(*) FILTER (WHERE success) AS successes,
       date_part('epoch', percentile_cont(0.5) WITHIN GROUP (ORDER BY span)
                          FILTER (WHERE NOT last_ping)) AS median_gap_s,
       coalesce(date_part('epoch', sum(span) FILTER (WHERE success)), 0) AS up_s,
       coalesce(date_part('epoch', sum(span)), 0) AS observed_s,
       array_agg(date_part('epoch', span)) FILTER (WHERE success AND span > $4) AS long_up,
       array_agg(date_part('epoch', span)) FILTER (WHERE NOT success AND span > $4)
           AS long_down,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY response_ms) FILTER (WHERE success)
           AS p50_ms,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY response_ms) FILTER (WHERE success)
           AS p95_ms,
       max(response_ms) FILTER (WHERE success) AS max_ms
FROM (
    SELECT target_gateway AS gateway_id, success, response_ms,
           greatest(least(next_ts, $3::timestamptz) - ts, interval '0') AS span,
           next_ts IS NULL AS last_ping
    FROM (
        SELECT target_gateway, success, response_ms, "timestamp" AS ts,
               lead("timestamp") OVER (PARTITION BY target_gateway ORDER BY "timestamp")
                   AS next_ts
        FROM ping_history
        WHERE "timestamp" >= $1 AND "timestamp" < $2 AND target_gateway = ANY($5::text[])
    ) AS pings
) AS spans
GROUP BY gateway_id
ORDER BY gateway_id
"""

# The peers with pings in [$1, $2) between $3 and $4: a loose index scan (one probe per
# peer), named `peers`; a NULL row ends it.
PEERS_CTE = """
WITH RECURSIVE peers AS (
    (SELECT target_gateway AS gateway_id FROM ping_history
     WHERE "timestamp" >= $1 AND "timestamp" < $2 AND target_gateway BETWEEN $3 AND $4
     ORDER BY target_gateway LIMIT 1)
    UNION ALL
    SELECT (SELECT target_gateway FROM ping_history
            WHERE target_gateway > p.gateway_id AND target_gateway <= $4
              AND "timestamp" >= $1 AND "timestamp" < $2
            ORDER BY target_gateway LIMIT 1)
    FROM peers AS p WHERE p.gateway_id IS NOT NULL
)
"""

# The peers with pings in the window (a loose index scan: one probe per peer), and the
# median gap of each one's last 101 pings there: a cheap guess at its cap, used only to
# choose PEER_STATS's $4 and to split the peers between connections.
GAP_SAMPLE = f"""{PEERS_CTE}SELECT p.gateway_id,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY gap_s) FROM (
            SELECT date_part('epoch', lag(ts) OVER (ORDER BY ts DESC) - ts) AS gap_s
            FROM (SELECT "timestamp" AS ts FROM ping_history
                  WHERE target_gateway = p.gateway_id
                    AND "timestamp" >= $1 AND "timestamp" < $2
                  ORDER BY "timestamp" DESC LIMIT 101) AS recent) AS gaps) AS median_gap_s
FROM peers AS p
WHERE p.gateway_id IS NOT NULL
ORDER BY p.gateway_id
"""  # noqa: S608 -- PEERS_CTE is a constant; every value is a parameter

INCIDENT_COUNTS = """
SELECT gateway_id, event_type, count(*) AS n
FROM incident_log
WHERE "timestamp" >= $1 AND "timestamp" < $2 AND ($3::text IS NULL OR gateway_id = $3)
GROUP BY gateway_id, event_type
"""

INCIDENTS = """
SELECT i.id, i."timestamp", i.gateway_id, f.name, i.event_type, i.details::text AS details
FROM incident_log AS i
LEFT JOIN fleet_instances AS f ON f.gateway_id = i.gateway_id
WHERE i."timestamp" >= $1 AND i."timestamp" < $2
  AND ($3::text IS NULL OR i.gateway_id = $3)
  AND ($4::text IS NULL OR i.event_type = $4)
ORDER BY i."timestamp" DESC, i.id DESC
LIMIT $5
"""

NO_JIT = "SET LOCAL jit = off"
# The rollup sums group ~720k rows of a 30-day fleet report by peer: with the default
# 4 MB the planner sorts them on disk; with this it hashes 1,000 groups in memory.
ROLLUP_WORK_MEM = "SET LOCAL work_mem = '64MB'"

PEER_NAMES = """
SELECT gateway_id, name FROM fleet_instances WHERE gateway_id = ANY($1::text[])
"""


async def peer_stats(
    conn: Conn,
    start: datetime,
    end: datetime,
    until: datetime,
    floor_s: float,
    gateways: Sequence[str],
) -> list[asyncpg.Record]:
    """PEER_STATS rows for `gateways`."""
    floor = timedelta(seconds=floor_s)
    return await conn.fetch(PEER_STATS, start, end, until, floor, list(gateways))


async def gap_sample(
    conn: Conn, start: datetime, end: datetime, first: str, last: str
) -> list[asyncpg.Record]:
    """GAP_SAMPLE rows (gateway_id, median_gap_s) for the gateways first..last."""
    return await conn.fetch(GAP_SAMPLE, start, end, first, last)


async def incident_counts(
    conn: Conn, start: datetime, end: datetime, gateway: str | None
) -> list[asyncpg.Record]:
    """(gateway_id, event_type, n) in the window."""
    return await conn.fetch(INCIDENT_COUNTS, start, end, gateway)


async def incidents(
    conn: Conn,
    start: datetime,
    end: datetime,
    gateway: str | None,
    event_type: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The newest `limit` incidents in the window, newest first, with the peer's name."""
    return await conn.fetch(INCIDENTS, start, end, gateway, event_type, limit)


async def peer_names(conn: Conn, gateway_ids: Sequence[str]) -> dict[str, str]:
    """gateway_id -> name for those of `gateway_ids` that fleet_instances knows."""
    rows = await conn.fetch(PEER_NAMES, list(gateway_ids))
    return {r["gateway_id"]: r["name"] for r in rows}


# ----------------------------------------------------------------- hourly rollup (004)

# Whether migration 004 is applied and readable by this role; else the exact path above.
ROLLUP_READY = """
SELECT CASE WHEN to_regclass('ping_rollup_hourly') IS NULL
             OR to_regclass('ping_rollup_state') IS NULL
             OR to_regprocedure('clawd_latency_hist(integer, integer)') IS NULL THEN false
            ELSE has_table_privilege('ping_rollup_hourly', 'SELECT')
             AND has_table_privilege('ping_rollup_state', 'SELECT')
             AND has_function_privilege('clawd_latency_hist(integer, integer)', 'EXECUTE')
       END
"""

WATERMARK = "SELECT rolled_up_to_id FROM ping_rollup_state"

# The peers with pings in [$1, $2), first..last: one index probe per peer.
PEERS = f"""{PEERS_CTE}SELECT gateway_id FROM peers WHERE gateway_id IS NOT NULL ORDER BY gateway_id
"""  # noqa: S608 -- PEERS_CTE is a constant; every value is a parameter

# (peer, hour) in [$2, $3) with a row above the watermark $1: their rollup rows (if any)
# are stale, so they are computed live. A range scan of the primary key.
UNROLLED = """
SELECT DISTINCT target_gateway, date_trunc('hour', "timestamp", 'UTC') AS hour
FROM ping_history
WHERE id > $1 AND "timestamp" >= $2 AND "timestamp" < $3
  AND ($4::text IS NULL OR target_gateway = $4)
"""


def _rollup_totals(buckets: int) -> str:
    sums = ", ".join(f"sum(r.latency_hist[{i}])" for i in range(1, buckets + 1))
    return f"""
SELECT r.target_gateway AS gateway_id, sum(r.pings)::bigint AS pings,
       sum(r.successes)::bigint AS successes, sum(r.up_ms)::bigint AS up_ms,
       sum(r.observed_ms)::bigint AS observed_ms, max(r.max_ms) AS max_ms,
       array_agg(r.median_gap_ms) FILTER (WHERE r.median_gap_ms IS NOT NULL) AS medians,
       ARRAY[{sums}]::bigint[] AS latency_hist
FROM ping_rollup_hourly AS r
WHERE r.hour >= $1 AND r.hour < $2
  AND (r.target_gateway, r.hour) NOT IN (SELECT * FROM unnest($6::text[], $7::timestamptz[]))
  AND ($3::text IS NULL OR r.target_gateway >= $3)
  AND ($4::text IS NULL OR r.target_gateway < $4)
  AND ($5::text IS NULL OR r.target_gateway = $5)
GROUP BY r.target_gateway
"""  # noqa: S608 -- only integer subscripts are formatted in


# Per peer in [$3, $4) (NULL: unbounded) or = $5, the sums of its rolled hours in
# [$1, $2) except the (peer, hour) pairs $6/$7, which are computed live instead.
ROLLUP_TOTALS = _rollup_totals(BUCKETS)


async def rollup_ready(conn: Conn) -> bool:
    """Whether ping_rollup_hourly (migration 004) exists and this role may read it."""
    return bool(await conn.fetchval(ROLLUP_READY))


async def watermark(conn: Conn) -> int:
    """Every ping_history row with an id up to this is rolled up."""
    return int(await conn.fetchval(WATERMARK))


async def peers(conn: Conn, start: datetime, end: datetime, first: str, last: str) -> list[str]:
    """The gateways first..last with pings in [start, end), in the database's order."""
    return [r["gateway_id"] for r in await conn.fetch(PEERS, start, end, first, last)]


async def unrolled(
    conn: Conn, mark: int, start: datetime, end: datetime, gateway: str | None
) -> list[tuple[str, datetime]]:
    """(peer, hour) in [start, end) holding a row above the watermark `mark`."""
    rows = await conn.fetch(UNROLLED, mark, start, end, gateway)
    return [(r["target_gateway"], r["hour"]) for r in rows]


async def rollup_totals(
    conn: Conn,
    start: datetime,
    end: datetime,
    bounds: tuple[str | None, str | None],
    gateway: str | None,
    exclude: Sequence[tuple[str, datetime]],
) -> list[asyncpg.Record]:
    """ROLLUP_TOTALS rows for hours in [start, end) of the peers in `bounds`."""
    return await conn.fetch(
        ROLLUP_TOTALS,
        start,
        end,
        bounds[0],
        bounds[1],
        gateway,
        [g for g, _ in exclude],
        [h for _, h in exclude],
    )
