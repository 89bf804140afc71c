"""What one pruning run did: rows, batches and timings per table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TablePrune:
    """Rows deleted from one table, older than `cutoff`, in `batches` short transactions."""

    table: str
    cutoff: datetime
    rows: int = 0
    batches: int = 0
    largest_batch_rows: int = 0
    longest_batch_ms: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class PruneResult:
    """One prune_once(): per-table figures, or why nothing (or not everything) was pruned."""

    tables: tuple[TablePrune, ...] = ()
    seconds: float = 0.0
    # "not_leader", "locked" (another clawd is pruning) or "unavailable"; None when it ran.
    skipped: str | None = None
    # Set when a run stopped early on a database error; counts cover what was done.
    error: str | None = None
    stopped: bool = field(default=False)

    def rows(self, table: str) -> int:
        """Rows deleted from `table` (0 when it was not pruned)."""
        return sum(t.rows for t in self.tables if t.table == table)

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def batches(self) -> int:
        return sum(t.batches for t in self.tables)

    @property
    def longest_batch_ms(self) -> float:
        return max((t.longest_batch_ms for t in self.tables), default=0.0)
