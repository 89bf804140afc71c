"""What the metrics endpoint reads at scrape time: a narrow view of the daemon's state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from clawd.core.model import PeerStatus
from clawd.decide.view import FleetView


@dataclass(frozen=True, slots=True)
class BackupState:
    """The last backup outcome; None fields are not exported (no backup yet)."""

    last_success: datetime | None = None
    last_size_bytes: int | None = None
    last_duration_s: float | None = None
    last_failed: bool = False
    running: bool = False


@dataclass(frozen=True, slots=True)
class PostgresState:
    """The PostgreSQL sink: connected or spooling, the spool's backlog, and whether
    writes are stuck (a connected sink can still stall, e.g. on a full disk)."""

    connected: bool
    spool_bytes: int
    pending_rows: int = 0
    spool_failing: bool = False
    stalled: bool = False
    waiting_seconds: float = 0.0


class MetricsSource(Protocol):
    """Cheap, non-blocking reads of the daemon's current state (called on the event loop)."""

    def fleet_view(self) -> FleetView:
        """The reconciler's current view: this instance, its peers, the leader."""
        ...

    def backup_state(self) -> BackupState:
        """The last backup outcome."""
        ...

    def postgres_state(self) -> PostgresState | None:
        """The PostgreSQL sink, or None when the backend is JSON only."""
        ...

    def loop_lag_ms(self) -> Mapping[str, float]:
        """LoopMonitor.percentiles_ms(): keys p50, p99, max."""
        ...


@dataclass(frozen=True, slots=True)
class PeerSample:
    """One peer's exported fields."""

    gateway: str
    name: str
    status: PeerStatus
    missed_pings: int
    phi: float = 0.0


@dataclass(frozen=True, slots=True)
class ScrapeState:
    """Everything one scrape exports from the source, as plain values safe to read off-loop."""

    me: PeerSample
    leader: str | None
    peers: tuple[PeerSample, ...]
    backup: BackupState
    postgres: PostgresState | None
    lag_ms: Mapping[str, float]


def read_state(source: MetricsSource) -> ScrapeState:
    """Copy what a scrape needs out of `source`; call on the event loop (O(peers), no I/O)."""
    view = source.fleet_view()
    me = PeerSample(view.me.gateway_id, view.me.name, PeerStatus.ONLINE, 0)
    peers = tuple(
        PeerSample(gid, r.instance.name, r.state.status, r.state.missed_pings, r.phi)
        for gid, r in view.peers.items()
    )
    return ScrapeState(
        me=me,
        leader=view.leader,
        peers=peers,
        backup=source.backup_state(),
        postgres=source.postgres_state(),
        lag_ms=dict(source.loop_lag_ms()),
    )
