"""Gauges computed at scrape time from a MetricsSource, so they can never go stale."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clawd.core.model import PeerStatus
from clawd.serve.metrics.source import MetricsSource, ScrapeState, read_state

STATUSES = tuple(PeerStatus)
# LoopMonitor's keys as quantiles; "max" is the 1.0 quantile.
LAG_QUANTILES = (("p50", "0.5"), ("p99", "0.99"), ("max", "1"))
PEER = ("gateway", "name")


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


PHI_CAP = 999.0
PEER_FAMILIES = {
    "clawd_peer_up": "1 when the peer is online, else 0",
    "clawd_peer_status": "1 for the peer's current status, 0 for the others",
    "clawd_peer_missed_pings": "consecutive failed pings to the peer",
    "clawd_peer_phi": "the accrual failure detector's suspicion of the peer (phi, capped at 999)",
    "clawd_leader": "1 for the instance this one sees as leader, else 0",
}


def peer_families(state: ScrapeState) -> Iterator[GaugeMetricFamily]:
    """The per-peer gauges (PEER_FAMILIES); text.PeerText renders the same, faster."""
    docs = PEER_FAMILIES
    up = GaugeMetricFamily("clawd_peer_up", docs["clawd_peer_up"], labels=PEER)
    status = GaugeMetricFamily(
        "clawd_peer_status", docs["clawd_peer_status"], labels=[*PEER, "status"]
    )
    missed = GaugeMetricFamily(
        "clawd_peer_missed_pings", docs["clawd_peer_missed_pings"], labels=PEER
    )
    phi = GaugeMetricFamily("clawd_peer_phi", docs["clawd_peer_phi"], labels=PEER)
    leader = GaugeMetricFamily("clawd_leader", docs["clawd_leader"], labels=PEER)
    me = state.me
    leader.add_metric([me.gateway, me.name], 1 if state.leader == me.gateway else 0)
    for peer in state.peers:
        labels = [peer.gateway, peer.name]
        up.add_metric(labels, 1 if peer.status is PeerStatus.ONLINE else 0)
        for s in STATUSES:
            status.add_metric([*labels, s.value], 1 if s is peer.status else 0)
        missed.add_metric(labels, peer.missed_pings)
        phi.add_metric(labels, round(min(peer.phi, PHI_CAP), 3))
        leader.add_metric(labels, 1 if state.leader == peer.gateway else 0)
    yield from (up, status, missed, phi, leader)


def fleet_families(state: ScrapeState) -> Iterator[GaugeMetricFamily]:
    """Peer counts by status and whether this instance leads."""
    counts = dict.fromkeys(STATUSES, 0)
    for peer in state.peers:
        counts[peer.status] += 1
    peers = GaugeMetricFamily("clawd_peers", "peers by status", labels=["status"])
    for s, n in counts.items():
        peers.add_metric([s.value], n)
    yield peers
    yield _gauge(
        "clawd_is_leader", "1 when this instance leads the fleet", state.leader == state.me.gateway
    )


def backup_families(state: ScrapeState) -> Iterator[GaugeMetricFamily]:
    """Backup gauges; a value not known yet (no good backup) is left out, not zero."""
    b = state.backup
    if b.last_success is not None:
        yield _gauge(
            "clawd_backup_last_success_timestamp_seconds",
            "when the last good backup finished (unix time)",
            b.last_success.timestamp(),
        )
    if b.last_size_bytes is not None:
        yield _gauge(
            "clawd_backup_last_size_bytes", "size of the last good backup", b.last_size_bytes
        )
    if b.last_duration_s is not None:
        yield _gauge(
            "clawd_backup_last_duration_seconds",
            "how long the last good backup took",
            b.last_duration_s,
        )
    yield _gauge("clawd_backup_last_failed", "1 when the most recent backup failed", b.last_failed)
    yield _gauge("clawd_backup_running", "1 while a backup runs", b.running)


def postgres_families(state: ScrapeState) -> Iterator[GaugeMetricFamily]:
    """PostgreSQL sink gauges; none when the backend is JSON only."""
    pg = state.postgres
    if pg is None:
        return
    yield _gauge(
        "clawd_postgres_connected",
        "1 when PostgreSQL takes writes, 0 while they are spooled",
        pg.connected,
    )
    yield _gauge(
        "clawd_spool_bytes", "PostgreSQL writes spooled on disk, awaiting replay", pg.spool_bytes
    )
    yield _gauge(
        "clawd_postgres_pending_rows",
        "rows waiting in memory only: neither in the spool nor in PostgreSQL yet",
        pg.pending_rows,
    )
    yield _gauge(
        "clawd_spool_write_failing",
        "1 while the spool cannot be written (disk full, read-only)",
        pg.spool_failing,
    )
    yield _gauge(
        "clawd_postgres_write_stalled",
        "1 while writes wait far longer than a healthy sink makes them wait",
        pg.stalled,
    )
    yield _gauge(
        "clawd_postgres_write_wait_seconds",
        "how long writes have waited without any reaching PostgreSQL (0 when none wait)",
        pg.waiting_seconds,
    )


def process_families(state: ScrapeState, version: str) -> Iterator[GaugeMetricFamily]:
    """Event-loop lag quantiles and the build info."""
    lag = GaugeMetricFamily(
        "clawd_event_loop_lag_seconds",
        "event-loop wake-up lag over the last five minutes",
        labels=["quantile"],
    )
    for key, quantile in LAG_QUANTILES:
        lag.add_metric([quantile], state.lag_ms.get(key, 0.0) / 1000)
    yield lag
    build = GaugeMetricFamily("clawd_build_info", "clawd's version; always 1", labels=["version"])
    build.add_metric([version], 1)
    yield build


def state_families(
    state: ScrapeState, version: str, *, peers: bool = True
) -> Iterator[GaugeMetricFamily]:
    """Every scrape-time gauge for `state`; `peers=False` leaves out PEER_FAMILIES."""
    if peers:
        yield from peer_families(state)
    yield from fleet_families(state)
    yield from backup_families(state)
    yield from postgres_families(state)
    yield from process_families(state, version)


class StateCollector(Collector):
    """The gauges of one fixed ScrapeState, except PEER_FAMILIES, then those of `others`."""

    def __init__(self, state: ScrapeState, version: str, others: Iterable[Collector]) -> None:
        self._state = state
        self._version = version
        self._others = tuple(others)

    def collect(self) -> Iterator[Metric]:
        yield from state_families(self._state, self._version, peers=False)
        for other in self._others:
            yield from other.collect()


class SourceCollector(Collector):
    """Reads the source on every collect(); collect on the event loop only."""

    def __init__(self, source: MetricsSource, version: str) -> None:
        self._source = source
        self._version = version

    def collect(self) -> Iterator[Metric]:
        yield from state_families(read_state(self._source), self._version)
