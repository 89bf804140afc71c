"""Deletes rows older than a cut-off in short batches, each its own transaction.

ping_history is pruned by primary-key ranges: ids grow with time, so a binary search
on the id index finds the boundary in ~log2(n) index probes, and every batch is an
index range scan on the primary key. No index on "timestamp" alone is needed, and
writers (which only append) never wait for a batch: a DELETE takes the same table
lock as an INSERT, and the rows it touches are ones nobody writes.

incident_log and skill_audit are small and have an index on "timestamp": they are
pruned straight through it.

Every DELETE also checks "timestamp" < cut-off, so a row is never deleted early.
Rows inserted late with an old timestamp (a spool replayed after an outage while
other clawds kept writing) may sit past the id boundary; they go once the boundary
passes them, i.e. they outlive the cut-off by at most the length of that outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from clawd.keep.retention.result import TablePrune
from clawd.keep.store.migrations import Conn

# A batch touching a few thousand rows by index takes milliseconds; this only stops
# a hung server from holding the run (and the advisory lock) for ever.
STATEMENT_TIMEOUT_S = 60.0

KeepGoing = Callable[[], bool]

_ID_BOUNDS = "SELECT min(id) AS lo, max(id) AS hi FROM ping_history"
_FIRST_FROM = 'SELECT id, "timestamp" FROM ping_history WHERE id >= $1 ORDER BY id LIMIT 1'

# ANY(ARRAY(...)) keeps both the inner and the outer scan on the primary key; a
# semi-join could be planned as a hash join over the whole table.
_DELETE_ID_RANGE = """
WITH doomed AS (
    DELETE FROM ping_history WHERE id = ANY (ARRAY(
        SELECT id FROM ping_history
        WHERE id >= $1 AND id < $2 AND "timestamp" < $3
        ORDER BY id LIMIT $4))
    RETURNING id
)
SELECT count(*)::int AS n, max(id) AS last FROM doomed
"""

_DELETE_BY_TIMESTAMP = """
WITH doomed AS (
    DELETE FROM {table} WHERE id = ANY (ARRAY(
        SELECT id FROM {table}
        WHERE "timestamp" >= $1 AND "timestamp" < $2
        ORDER BY "timestamp" LIMIT $3))
    RETURNING "timestamp"
)
SELECT count(*)::int AS n, max("timestamp") AS last FROM doomed
"""

TIMESTAMP_TABLES = ("observer_evidence", "incident_log", "skill_audit")


class Tally:
    """Running figures for one table; survives a run that fails half-way."""

    __slots__ = ("_figures", "_started")

    def __init__(self, table: str, cutoff: datetime) -> None:
        self._figures = TablePrune(table, cutoff)
        self._started = time.perf_counter()

    @property
    def table(self) -> str:
        return self._figures.table

    @property
    def cutoff(self) -> datetime:
        return self._figures.cutoff

    def add(self, rows: int, ms: float) -> None:
        so_far = self._figures
        if rows:
            so_far = replace(
                so_far,
                rows=so_far.rows + rows,
                batches=so_far.batches + 1,
                largest_batch_rows=max(so_far.largest_batch_rows, rows),
            )
        self._figures = replace(so_far, longest_batch_ms=max(so_far.longest_batch_ms, ms))

    def result(self) -> TablePrune:
        return replace(
            self._figures,
            longest_batch_ms=round(self._figures.longest_batch_ms, 3),
            seconds=round(time.perf_counter() - self._started, 3),
        )


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """At most `rows` rows per transaction, `pause_seconds` between transactions."""

    rows: int
    pause_seconds: float


async def ping_id_boundary(conn: Conn, cutoff: datetime) -> tuple[int, int] | None:
    """(lowest id, boundary id): rows below the boundary are, going by id order, older
    than `cutoff`; None when the table is empty."""
    bounds = await conn.fetchrow(_ID_BOUNDS, timeout=STATEMENT_TIMEOUT_S)
    if bounds is None or bounds["lo"] is None:
        return None
    # Invariant: probes at or below `lo` found rows older than cutoff (the table's
    # start counts as old); probes at or after `hi` did not.
    first, lo, hi = int(bounds["lo"]), int(bounds["lo"]) - 1, int(bounds["hi"]) + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        row = await conn.fetchrow(_FIRST_FROM, mid, timeout=STATEMENT_TIMEOUT_S)
        if row is not None and row["timestamp"] < cutoff:
            lo = max(mid, int(row["id"]))
        else:
            hi = mid
    return first, hi


async def _pause(policy: BatchPolicy) -> None:
    if policy.pause_seconds > 0:
        await asyncio.sleep(policy.pause_seconds)


async def prune_ping_history(
    conn: Conn, tally: Tally, policy: BatchPolicy, keep_going: KeepGoing
) -> bool:
    """Delete ping_history rows older than `tally.cutoff`; False if stopped early."""
    bounds = await ping_id_boundary(conn, tally.cutoff)
    if bounds is None:
        return True
    start, boundary = bounds
    if boundary <= start:
        return True
    while True:
        began = time.perf_counter()
        row = await conn.fetchrow(
            _DELETE_ID_RANGE,
            start,
            boundary,
            tally.cutoff,
            policy.rows,
            timeout=STATEMENT_TIMEOUT_S,
        )
        assert row is not None  # an aggregate always returns a row
        tally.add(row["n"], (time.perf_counter() - began) * 1000)
        if row["n"] < policy.rows:
            return True
        start = int(row["last"]) + 1
        if not keep_going():
            return False
        await _pause(policy)


async def prune_by_timestamp(
    conn: Conn, tally: Tally, policy: BatchPolicy, keep_going: KeepGoing
) -> bool:
    """Delete rows of a TIMESTAMP_TABLES table older than `tally.cutoff`; False if stopped."""
    if tally.table not in TIMESTAMP_TABLES:
        raise ValueError(f"{tally.table} is not pruned by timestamp")
    sql = _DELETE_BY_TIMESTAMP.format(table=tally.table)
    since = await conn.fetchval(
        f'SELECT min("timestamp") FROM {tally.table}',  # noqa: S608 - a fixed table name
        timeout=STATEMENT_TIMEOUT_S,
    )
    if since is None or since >= tally.cutoff:
        return True
    while True:
        began = time.perf_counter()
        row = await conn.fetchrow(
            sql, since, tally.cutoff, policy.rows, timeout=STATEMENT_TIMEOUT_S
        )
        assert row is not None
        tally.add(row["n"], (time.perf_counter() - began) * 1000)
        if row["n"] < policy.rows:
            return True
        since = row["last"]  # ">=": rows tied with the last one deleted are not skipped
        if not keep_going():
            return False
        await _pause(policy)
