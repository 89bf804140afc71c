"""Retention of PostgreSQL history: the leader deletes old rows in short batches."""

from clawd.retention.connect import dedicated_connection
from clawd.retention.dbjob import ConnectionFactory
from clawd.retention.pruner import PRUNE_LOCK_ID, RetentionPruner
from clawd.retention.result import PruneResult, TablePrune

__all__ = [
    "PRUNE_LOCK_ID",
    "ConnectionFactory",
    "PruneResult",
    "RetentionPruner",
    "TablePrune",
    "dedicated_connection",
]
