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
from typing import Any

import asyncpg

from clawd.history import queries
from clawd.history.report import GAP_CAP_FACTOR, PeerStats, Report, build_peers
from clawd.history.timespec import Window
from clawd.store.migrations import Conn

# The window pass is single-threaded in PostgreSQL: two connections, each on half of
# the peers, use two cores. More would only queue on a 2-core server.
CONNECTIONS = 2
# The lowest and highest text values, for "all gateways".
ALL = ("", "\U0010ffff")
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]+$")


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


async def build_report(
    pool: asyncpg.Pool, window: Window, now: datetime, gateway: str | None = None
) -> Report:
    """The report for `window` (spans end at min(window end, now)), one snapshot."""
    until = min(window.end, now)
    async with snapshot(pool) as (conn, snap):
        stats = await fetch_stats(pool, conn, snap, window, until, gateway)
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
