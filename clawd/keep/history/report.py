"""Per-peer report figures, and how availability is computed from ping spans.

Availability, precisely (with migration 004, the hourly rollup). Cut the window
[start, end) at UTC hour boundaries into pieces; let E = min(end, now). For one peer and
one piece [a, b) of the hour [h, h + 1h), take its pings there in time order,
t1 < t2 < … < tn. Ping i *holds* its outcome for span_i = min(t(i+1), h + 1h, E) - t_i,
the last one until min(h + 1h, E) (never negative): a span belongs to the hour in which
its ping was taken and stops at that hour's end (the peer's next ping, possibly in the
next hour, is never earlier than that, so looking one ping ahead changes nothing). The
piece's *gaps* are span_1 … span_(n-1); m_h is their median (the mean of the two middle
values for an even count). Every span is capped at 3·m_h, so a stretch when nobody
pinged the peer (monitor down, PostgreSQL restored from an old backup) counts neither as
up nor as down time. Then, summed over the pieces,

    observed     = Σ_h Σ_i min(span_i, 3·m_h)        over all pings
    up           = Σ_h Σ_i min(span_i, 3·m_h)        over successful pings
    availability = up / observed

A piece with fewer than two pings observes nothing (no gaps, cap 0); availability is
undefined (None) when observed is 0. Time before a piece's first ping is not observed, so
up to one gap per peer-hour (the stretch from the hour boundary to the hour's first ping)
counts neither way. Spans are summed in whole milliseconds per hour. Pings from several
monitors (source_gateway) are merged: the newest observation of the peer, whoever made
it, holds. Pings with equal timestamps are ordered arbitrarily. medianGapSeconds is the
median of the pieces' m_h.

Response times use successful pings only: max is exact; p50/p95 come from per-hour
histograms (latency.py): the upper bound of the bucket of the value percentile_disc
would pick, capped at the max, at most 25.9 % above the exact value, never below it.

Before migration 004 (or for a role that may not read its tables) the report takes the
exact path of PeerStats: one piece for the whole window (one median m, spans to the next
ping in the window) and exact percentile_disc percentiles.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from clawd.keep.history import latency

GAP_CAP_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class PeerStats:
    """One row of queries.PEER_STATS: spans uncapped, plus every span longer than floor_s."""

    gateway_id: str
    pings: int
    successes: int
    median_gap_s: float | None
    up_s: float
    observed_s: float
    long_up: tuple[float, ...]
    long_down: tuple[float, ...]
    floor_s: float
    p50_ms: int | None
    p95_ms: int | None
    max_ms: int | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | asyncpg.Record, floor_s: float) -> PeerStats:
        """From a PEER_STATS record fetched with $4 = floor_s."""
        return cls(
            gateway_id=row["gateway_id"],
            pings=int(row["pings"]),
            successes=int(row["successes"]),
            median_gap_s=_float_or_none(row["median_gap_s"]),
            up_s=float(row["up_s"]),
            observed_s=float(row["observed_s"]),
            long_up=tuple(float(s) for s in row["long_up"] or ()),
            long_down=tuple(float(s) for s in row["long_down"] or ()),
            floor_s=floor_s,
            p50_ms=row["p50_ms"],
            p95_ms=row["p95_ms"],
            max_ms=row["max_ms"],
        )

    @property
    def cap_s(self) -> float:
        """The span cap, 3x the median gap; 0 without gaps."""
        return GAP_CAP_FACTOR * self.median_gap_s if self.median_gap_s else 0.0

    @property
    def exact(self) -> bool:
        """Whether every span above the cap was returned, so capping is exact."""
        return self.cap_s == 0 or self.cap_s >= self.floor_s


def capped_sum(total: float, long_spans: Iterable[float], cap: float) -> float:
    """Σ min(span, cap), given Σ span and every span longer than cap."""
    return total - sum(s - cap for s in long_spans if s > cap)


@dataclass(frozen=True, slots=True)
class PeerReport:
    """What `clawd report` shows for one peer."""

    gateway_id: str
    name: str | None
    pings: int
    successes: int
    success_pct: float | None
    availability_pct: float | None
    observed_s: float
    up_s: float
    median_gap_s: float | None
    p50_ms: int | None
    p95_ms: int | None
    max_ms: int | None
    incidents: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    """The whole report: its window (until = min(end, now)) and one entry per peer."""

    start: datetime
    end: datetime
    until: datetime
    peers: list[PeerReport]


def _percent(part: float, whole: float) -> float | None:
    """`part` as a percentage of `whole`; None when there is no whole to speak of."""
    return 100.0 * part / whole if whole > 0 else None


def peer_report(
    stats: PeerStats | None,
    gateway_id: str,
    name: str | None,
    incidents: Mapping[str, int],
) -> PeerReport:
    """Combine ping figures (None: no pings in the window) with names and incidents."""
    if stats is None:
        return PeerReport(
            gateway_id, name, 0, 0, None, None, 0.0, 0.0, None, None, None, None, dict(incidents)
        )
    if not stats.exact:
        raise ValueError(f"{gateway_id}: spans above the cap were not all fetched")
    cap = stats.cap_s
    up = capped_sum(stats.up_s, stats.long_up, cap) if cap else 0.0
    down = capped_sum(stats.observed_s - stats.up_s, stats.long_down, cap) if cap else 0.0
    observed = up + down
    return PeerReport(
        gateway_id=gateway_id,
        name=name,
        pings=stats.pings,
        successes=stats.successes,
        success_pct=_percent(stats.successes, stats.pings),
        availability_pct=_percent(up, observed),
        observed_s=observed,
        up_s=up,
        median_gap_s=stats.median_gap_s,
        p50_ms=stats.p50_ms,
        p95_ms=stats.p95_ms,
        max_ms=stats.max_ms,
        incidents=dict(incidents),
    )


@dataclass(frozen=True, slots=True)
class PeerTotals:
    """One peer's hourly figures summed over the window (rolled and live hours alike)."""

    gateway_id: str
    pings: int
    successes: int
    up_ms: int
    observed_ms: int
    max_ms: int | None
    latency_hist: tuple[int, ...]
    median_gaps_ms: tuple[float, ...]


def totals_report(
    totals: PeerTotals, gateway_id: str, name: str | None, incidents: Mapping[str, int]
) -> PeerReport:
    """Combine summed hourly figures with names and incidents."""
    medians = totals.median_gaps_ms
    return PeerReport(
        gateway_id=gateway_id,
        name=name,
        pings=totals.pings,
        successes=totals.successes,
        success_pct=_percent(totals.successes, totals.pings),
        availability_pct=_percent(totals.up_ms, totals.observed_ms),
        observed_s=totals.observed_ms / 1000,
        up_s=totals.up_ms / 1000,
        median_gap_s=statistics.median(medians) / 1000 if medians else None,
        p50_ms=latency.percentile(totals.latency_hist, 0.5, totals.max_ms),
        p95_ms=latency.percentile(totals.latency_hist, 0.95, totals.max_ms),
        max_ms=totals.max_ms,
        incidents=dict(incidents),
    )


def build_peers(
    stats: Sequence[PeerStats | PeerTotals],
    names: Mapping[str, str],
    incidents: Mapping[str, Mapping[str, int]],
) -> list[PeerReport]:
    """One PeerReport per peer with pings or incidents, ordered by gateway id."""
    by_id = {s.gateway_id: s for s in stats}
    ids = sorted(set(by_id) | set(incidents))
    out = []
    for g in ids:
        found = by_id.get(g)
        if isinstance(found, PeerTotals):
            out.append(totals_report(found, g, names.get(g), incidents.get(g, {})))
        else:
            out.append(peer_report(found, g, names.get(g), incidents.get(g, {})))
    return out


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
