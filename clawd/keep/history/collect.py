"""Runs the history queries in one read-only snapshot and builds what the CLI shows."""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from clawd.keep.history import hourly, latency, queries
from clawd.keep.history.hourly import HOUR, HourTotals, Segment
from clawd.keep.history.report import GAP_CAP_FACTOR, PeerStats, PeerTotals, Report, build_peers
from clawd.keep.history.timespec import Window
from clawd.keep.store.migrations import Conn

# The window pass is single-threaded in PostgreSQL: two connections, each on half of
# the peers, use two cores. More would only queue on a 2-core server.
CONNECTIONS = 2
# The lowest and highest text values, for "all gateways".
ALL = ("", "\U0010ffff")
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]+$")

ReportPath = Literal["auto", "rollup", "live", "exact"]


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """One incident_log row, with the peer's name when fleet_instances knows it."""

    id: int
    timestamp: datetime
    gateway_id: str
    name: str | None
    event_type: str
    details: Any


def floor_from_sample(medians: Sequence[float | None]) -> float:
    """Half the smallest sampled cap: spans above it are fetched one by one."""
    caps = [GAP_CAP_FACTOR * m for m in medians if m]
    return min(caps) / 2 if caps else 0.0


def split(ids: Sequence[str], parts: int) -> list[list[str]]:
    """`ids` cut into at most `parts` contiguous, non-empty, near-equal lists."""
    size = -(-len(ids) // parts) if ids else 1
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


@asynccontextmanager
async def snapshot(pool: asyncpg.Pool) -> AsyncIterator[tuple[Conn, str]]:
    """A read-only repeatable-read transaction and its exported snapshot id."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        snap: str = await conn.fetchval("SELECT pg_export_snapshot()")
        yield conn, snap


@asynccontextmanager
async def joined(pool: asyncpg.Pool, snap: str) -> AsyncIterator[Conn]:
    """Another connection in the same snapshot as `snap`'s exporter."""
    if not _SNAPSHOT_ID.match(snap):
        raise ValueError(f"unexpected snapshot id {snap!r}")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # SET TRANSACTION SNAPSHOT takes no parameters; the id is checked above.
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{snap}'")
        # JIT saved nothing measurable on PEER_STATS at 10M rows, and compiling costs 0.1-0.3 s.
        await conn.execute(queries.NO_JIT)
        yield conn


async def _range_stats(
    pool: asyncpg.Pool, snap: str, window: Window, until: datetime, floor: float, ids: list[str]
) -> list[PeerStats]:
    async with joined(pool, snap) as conn:
        rows = await queries.peer_stats(conn, window.start, window.end, until, floor, ids)
    return [PeerStats.from_row(row, floor) for row in rows]


async def fetch_stats(
    pool: asyncpg.Pool, conn: Conn, snap: str, window: Window, until: datetime, gateway: str | None
) -> list[PeerStats]:
    """PEER_STATS for the window, exact: fetched again with a lower floor if needed."""
    first, last = (gateway, gateway) if gateway is not None else ALL
    sample = await queries.gap_sample(conn, window.start, window.end, first, last)
    floor = floor_from_sample([r["median_gap_s"] for r in sample])
    ranges = split([r["gateway_id"] for r in sample], CONNECTIONS)
    while True:
        parts = await asyncio.gather(
            *(_range_stats(pool, snap, window, until, floor, r) for r in ranges)
        )
        stats = [s for part in parts for s in part]
        short = [s.cap_s for s in stats if not s.exact]
        if not short:
            return stats
        # A peer's cap fell below the sampled guess: once more with every span it needs.
        floor = min(short)


@dataclass(frozen=True, slots=True)
class Pieces:
    """The window cut at hour boundaries: whole ended hours, and edge pieces (always live)."""

    full: tuple[datetime, datetime] | None  # [first, last) whole hours that have ended
    edges: tuple[tuple[datetime, datetime, datetime, datetime], ...]  # (hour, lo, hi, e)


def cut(window: Window, until: datetime) -> Pieces:
    """Whole hours of [start, until), plus the edge pieces computed live (see report.py)."""
    start, end = window.start, window.end
    first = _ceil_hour(start)
    last = hourly.hour_of(until)
    edges: list[tuple[datetime, datetime, datetime, datetime]] = []
    if start < first:
        edges.append((hourly.hour_of(start), start, min(first, end), min(first, until)))
    begin = max(first, last)
    if begin < end and begin < _ceil_hour(until):
        edges.append((begin, begin, min(begin + HOUR, end), min(begin + HOUR, until)))
    # Pings stamped after now hold no time: one piece for all of them.
    future = max(begin, _ceil_hour(until))
    if future < end:
        edges.append((future, future, end, until))
    return Pieces((first, last) if last > first else None, tuple(edges))


def _ceil_hour(moment: datetime) -> datetime:
    floor = hourly.hour_of(moment)
    return floor if floor == moment else floor + HOUR


def sum_totals(hours: Sequence[HourTotals], rolled: Sequence[PeerTotals]) -> list[PeerTotals]:
    """Per peer: rolled-up sums plus live hours, histograms merged."""
    by_id = {t.gateway_id: t for t in rolled}
    for h in hours:
        t = by_id.get(h.gateway_id)
        medians = () if h.median_gap_ms is None else (h.median_gap_ms,)
        if t is None:
            by_id[h.gateway_id] = PeerTotals(
                h.gateway_id, h.pings, h.successes, h.up_ms, h.observed_ms, h.max_ms,
                h.latency_hist, medians,
            )  # fmt: skip
            continue
        maxes = [m for m in (t.max_ms, h.max_ms) if m is not None]
        by_id[h.gateway_id] = PeerTotals(
            t.gateway_id,
            t.pings + h.pings,
            t.successes + h.successes,
            t.up_ms + h.up_ms,
            t.observed_ms + h.observed_ms,
            max(maxes) if maxes else None,
            tuple(latency.merge(t.latency_hist, h.latency_hist)),
            t.median_gaps_ms + medians,
        )
    return [by_id[g] for g in sorted(by_id)]


def _rolled(row: asyncpg.Record) -> PeerTotals:
    return PeerTotals(
        gateway_id=row["gateway_id"],
        pings=int(row["pings"]),
        successes=int(row["successes"]),
        up_ms=int(row["up_ms"]),
        observed_ms=int(row["observed_ms"]),
        max_ms=row["max_ms"],
        latency_hist=tuple(int(n) for n in row["latency_hist"]),
        median_gaps_ms=tuple(float(m) for m in row["medians"] or ()),
    )


async def _range_totals(
    pool: asyncpg.Pool,
    snap: str,
    pieces: Pieces,
    bounds: tuple[str | None, str | None],
    gateway: str | None,
    peers: Sequence[str],
    live: Sequence[tuple[str, datetime]],
    use_rollup: bool,
) -> list[PeerTotals]:
    segments = [Segment(p, *edge) for p in peers for edge in pieces.edges]
    mine = set(peers)
    full_live = [(g, h) for g, h in live if g in mine]
    rolled: list[PeerTotals] = []
    async with joined(pool, snap) as conn:
        if pieces.full is not None:
            if use_rollup:
                await conn.execute(queries.ROLLUP_WORK_MEM)
                rows = await queries.rollup_totals(conn, *pieces.full, bounds, gateway, live)
                rolled = [_rolled(r) for r in rows]
            segments += [hourly.whole_hour(g, h) for g, h in full_live]
        hours = await hourly.compute(conn, segments)
    return sum_totals(hours, rolled)


async def fetch_totals(
    pool: asyncpg.Pool,
    conn: Conn,
    snap: str,
    window: Window,
    until: datetime,
    gateway: str | None,
    *,
    use_rollup: bool = True,
) -> list[PeerTotals]:
    """Summed hourly figures: rolled hours from the rollup, the rest computed live."""
    pieces = cut(window, until)
    first, last = (gateway, gateway) if gateway is not None else ALL
    peers = await queries.peers(conn, window.start, window.end, first, last)
    live: list[tuple[str, datetime]] = []
    if pieces.full is not None:
        if use_rollup:
            mark = await queries.watermark(conn)
            live = await queries.unrolled(conn, mark, *pieces.full, gateway)
        else:
            live = [(p, h) for p in peers for h in _hours(*pieces.full)]
    if gateway is not None:
        ranges: list[tuple[str | None, str | None]] = [(None, None)]
        parts = [peers]
    else:
        parts = split(peers, CONNECTIONS) or [[]]
        starts: list[str | None] = [None, *(p[0] for p in parts[1:])]
        ranges = list(zip(starts, [*starts[1:], None], strict=True))
    results = await asyncio.gather(
        *(
            _range_totals(pool, snap, pieces, bounds, gateway, part, live, use_rollup)
            for bounds, part in zip(ranges, parts, strict=True)
        )
    )
    return sorted((t for part in results for t in part), key=lambda t: t.gateway_id)


def _hours(first: datetime, last: datetime) -> list[datetime]:
    count = int((last - first) / HOUR)
    return [first + i * HOUR for i in range(count)]


async def choose_path(conn: Conn, path: ReportPath) -> ReportPath:
    """Resolve "auto": the rollup once it is readable and has been built, else exact."""
    if path != "auto":
        return path
    if await queries.rollup_ready(conn) and await queries.watermark(conn) > 0:
        return "rollup"
    # Never rolled (004 applied, no maintainer run yet): every hour through the hourly
    # SQL would be slower than the whole-window path.
    return "exact"


async def build_report(
    pool: asyncpg.Pool,
    window: Window,
    now: datetime,
    gateway: str | None = None,
    *,
    path: ReportPath = "auto",
) -> Report:
    """The report for `window` (spans end at min(window end, now)), one snapshot.

    path: "rollup" (hourly rows + live edges), "live" (the same definition, every hour
    from ping_history), "exact" (whole-window spans, before migration 004), or "auto".
    """
    until = min(window.end, now)
    async with snapshot(pool) as (conn, snap):
        stats: list[PeerStats] | list[PeerTotals]
        chosen = await choose_path(conn, path)
        if chosen == "exact":
            stats = await fetch_stats(pool, conn, snap, window, until, gateway)
        else:
            use_rollup = chosen == "rollup"
            stats = await fetch_totals(
                pool, conn, snap, window, until, gateway, use_rollup=use_rollup
            )
        counts: defaultdict[str, dict[str, int]] = defaultdict(dict)
        for r in await queries.incident_counts(conn, window.start, window.end, gateway):
            counts[r["gateway_id"]][r["event_type"]] = int(r["n"])
        ids = sorted({s.gateway_id for s in stats} | set(counts))
        names = await queries.peer_names(conn, ids)
    return Report(window.start, window.end, until, build_peers(stats, names, counts))


async def fetch_incidents(
    pool: asyncpg.Pool, window: Window, gateway: str | None, event_type: str | None, limit: int
) -> list[IncidentRow]:
    """The newest `limit` matching incidents, oldest first."""
    async with pool.acquire() as conn:
        rows = await queries.incidents(conn, window.start, window.end, gateway, event_type, limit)
    return [
        IncidentRow(
            id=int(r["id"]),
            timestamp=r["timestamp"],
            gateway_id=r["gateway_id"],
            name=r["name"],
            event_type=r["event_type"],
            details=json.loads(r["details"]) if r["details"] is not None else None,
        )
        for r in reversed(rows)
    ]
