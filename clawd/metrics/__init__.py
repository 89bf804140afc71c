"""The optional Prometheus endpoint: fleet gauges at scrape time, ping and incident hooks."""

from clawd.metrics.adapter import DaemonSource, backup_state
from clawd.metrics.registry import FleetMetrics
from clawd.metrics.server import MetricsServer
from clawd.metrics.source import BackupState, MetricsSource, PostgresState

__all__ = [
    "BackupState",
    "DaemonSource",
    "FleetMetrics",
    "MetricsServer",
    "MetricsSource",
    "PostgresState",
    "backup_state",
]
