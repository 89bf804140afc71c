"""Builds a MetricsSource from the daemon's parts, so the endpoint needs no daemon import."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from clawd.decide.view import FleetView
from clawd.serve.metrics.source import BackupState, PostgresState


class SinkStatus(Protocol):
    """What PgSink offers: connection state and spool backlog."""

    @property
    def connected(self) -> bool: ...

    @property
    def backlog_bytes(self) -> int: ...

    @property
    def pending_rows(self) -> int: ...

    @property
    def spool_failing(self) -> bool: ...

    @property
    def stalled(self) -> bool: ...

    def waiting_seconds(self) -> float: ...


class LagStatus(Protocol):
    """What LoopMonitor offers."""

    def percentiles_ms(self) -> dict[str, float]: ...


class BackupOutcome(Protocol):
    """What a backup result offers the metrics (clawd.act.backup.results.BackupResult):
    a protocol, so that the endpoint does not import the backup feature."""

    @property
    def size(self) -> int: ...

    @property
    def duration_s(self) -> float: ...


class BackupStatus(Protocol):
    """What BackupManager must offer for backup metrics."""

    @property
    def running(self) -> bool: ...

    @property
    def last_good(self) -> datetime | None: ...

    @property
    def last_good_result(self) -> BackupOutcome | None: ...

    @property
    def last_error(self) -> str | None: ...


def backup_state(status: BackupStatus) -> BackupState:
    """The metrics view of a backup manager's last outcome."""
    result = status.last_good_result
    return BackupState(
        last_success=status.last_good,
        last_size_bytes=result.size if result is not None else None,
        last_duration_s=result.duration_s if result is not None else None,
        last_failed=status.last_error is not None,
        running=status.running,
    )


class DaemonSource:
    """A MetricsSource over callables, so reloads that replace a part are seen."""

    def __init__(
        self,
        view: Callable[[], FleetView],
        backup: Callable[[], BackupState],
        sink: Callable[[], SinkStatus | None],
        lag: LagStatus,
    ) -> None:
        self._view = view
        self._backup = backup
        self._sink = sink
        self._lag = lag

    def fleet_view(self) -> FleetView:
        return self._view()

    def backup_state(self) -> BackupState:
        return self._backup()

    def postgres_state(self) -> PostgresState | None:
        sink = self._sink()
        if sink is None:
            return None
        return PostgresState(
            connected=sink.connected,
            spool_bytes=sink.backlog_bytes,
            pending_rows=sink.pending_rows,
            spool_failing=sink.spool_failing,
            stalled=sink.stalled,
            waiting_seconds=sink.waiting_seconds(),
        )

    def loop_lag_ms(self) -> Mapping[str, float]:
        return self._lag.percentiles_ms()
