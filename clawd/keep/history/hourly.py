"""The per-hour aggregate over ping_history, shared by the rollup and the report's edges.

A *segment* is one peer's pings in [lo, hi), inside one UTC hour; spans end at e (the
hour's end, or earlier at the report's window end or now). See report.py for the
definition; this SQL is the only implementation of it, so rolled and live hours agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from clawd.keep.history.latency import BUCKETS, WIDTH_THRESHOLDS
from clawd.keep.history.report import GAP_CAP_FACTOR
from clawd.keep.store.migrations import Conn

HOUR = timedelta(hours=1)

# $1..$5 the segments as parallel arrays (peer, hour, lo, hi, e); $6 the width_bucket()
# thresholds, $7 the bucket count, $8 the cap factor. One index range scan of the
# covering index (migrations/003) per segment; `lead` needs no sort, the index is in
# time order. Spans are in ms, rounded once per hour.
SEGMENTS = """
SELECT k.gw AS target_gateway, k.hour, a.pings, a.successes,
       coalesce(round(c.up_ms), 0)::bigint AS up_ms,
       coalesce(round(c.observed_ms), 0)::bigint AS observed_ms,
       a.median_gap_ms, a.max_ms,
       coalesce(a.hist, array_fill(0, ARRAY[$7::int])) AS latency_hist
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[],
            $5::timestamptz[]) AS k(gw, hour, lo, hi, e)
CROSS JOIN LATERAL (
    SELECT count(*)::int AS pings,
           count(*) FILTER (WHERE success)::int AS successes,
           max(response_ms) FILTER (WHERE success) AS max_ms,
           clawd_latency_hist(width_bucket(response_ms, $6::int[]) + 1, $7::int)
               FILTER (WHERE success AND response_ms IS NOT NULL) AS hist,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY span_ms) FILTER (WHERE is_gap)
               AS median_gap_ms,
           array_agg(span_ms) AS spans,
           array_agg(success) AS oks
    FROM (
        SELECT success, response_ms, next_ts IS NOT NULL AS is_gap,
               greatest(date_part('epoch', least(next_ts, k.e) - ts) * 1000, 0) AS span_ms
        FROM (
            SELECT success, response_ms, "timestamp" AS ts,
                   lead("timestamp") OVER (ORDER BY "timestamp") AS next_ts
            FROM ping_history
            WHERE target_gateway = k.gw AND "timestamp" >= k.lo AND "timestamp" < k.hi
        ) AS pings
    ) AS spans
) AS a
CROSS JOIN LATERAL (
    SELECT sum(least(sp, coalesce($8::float8 * a.median_gap_ms, 0))) FILTER (WHERE ok) AS up_ms,
           sum(least(sp, coalesce($8::float8 * a.median_gap_ms, 0))) AS observed_ms
    FROM unnest(a.spans, a.oks) AS u(sp, ok)
) AS c
WHERE a.pings > 0
"""


@dataclass(frozen=True, slots=True)
class Segment:
    """One peer's pings in [lo, hi) within the UTC hour `hour`, spans ending by `e`."""

    gateway_id: str
    hour: datetime
    lo: datetime
    hi: datetime
    e: datetime


@dataclass(frozen=True, slots=True)
class HourTotals:
    """The per-hour figures of one peer (a rollup row, or a segment computed live)."""

    gateway_id: str
    hour: datetime
    pings: int
    successes: int
    up_ms: int
    observed_ms: int
    median_gap_ms: float | None
    max_ms: int | None
    latency_hist: tuple[int, ...]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> HourTotals:
        """From a SEGMENTS or ping_rollup_hourly record."""
        median = row["median_gap_ms"]
        return cls(
            gateway_id=row["target_gateway"],
            hour=row["hour"],
            pings=int(row["pings"]),
            successes=int(row["successes"]),
            up_ms=int(row["up_ms"]),
            observed_ms=int(row["observed_ms"]),
            median_gap_ms=None if median is None else float(median),
            max_ms=row["max_ms"],
            latency_hist=tuple(row["latency_hist"]),
        )


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment`."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def whole_hour(gateway_id: str, hour: datetime) -> Segment:
    """The segment of a whole hour that has ended (as rolled up)."""
    return Segment(gateway_id, hour, hour, hour + HOUR, hour + HOUR)


def params(segments: Sequence[Segment]) -> tuple[object, ...]:
    """SEGMENTS's $1..$8 for `segments`."""
    return (
        [s.gateway_id for s in segments],
        [s.hour for s in segments],
        [s.lo for s in segments],
        [s.hi for s in segments],
        [s.e for s in segments],
        list(WIDTH_THRESHOLDS),
        BUCKETS,
        GAP_CAP_FACTOR,
    )


async def compute(conn: Conn, segments: Sequence[Segment]) -> list[HourTotals]:
    """The figures of each segment that holds at least one ping."""
    if not segments:
        return []
    rows = await conn.fetch(SEGMENTS, *params(segments))
    return [HourTotals.from_row(r) for r in rows]
