"""Per-peer failure detectors: phi-accrual, and the classic "N missed pings" threshold.

The phi-accrual detector (N. Hayashibara, X. Défago, R. Yared, T. Katayama, "The phi
accrual failure detector", Proc. 23rd IEEE SRDS, 2004, pp. 66-78) does not answer
"alive or dead" but "how suspicious is this silence": every successful ping of a peer is a
heartbeat, and after ``t`` seconds without one ::

    phi(t) = -log10(P(gap > t))

where P(gap > t), the probability that the next heartbeat is merely later than ``t``, comes
from the peer's own past gaps. phi = 1 means a 10 % chance that the heartbeat is merely
late, phi = 4.5 one in 30,000.

This is the paper's framework with a different estimator of the gap distribution. The
paper fits a normal distribution to a sliding window of gaps (Akka does too, with a floored
std; Cassandra fits an exponential). On clawd's peers such a fit fails twice over: a
window of 100 gaps (~17 min) forgets loss bursts that recur every half hour, and a normal
fitted to mostly regular gaps has far too thin a tail to excuse the bursts it does
remember (0.77x the threshold detector's false offlines, measured with the first version
of this module). Here the gaps are measured in units ``u`` of the peer's ping interval, and
their distribution is a two-part mixture:

* with probability ``1 - p`` a gap is *regular* (shorter than ``REGULAR_MAX`` = 1.5 u: no
  ping lost): a normal N(mean, std) fitted to the regular gaps, the std floored at
  ``min_std_fraction * expected_interval`` as in Akka. It shapes phi before the first
  missed ping, i.e. for display and SUSPECT;
* with probability ``p`` it is a *loss gap* (one or more pings lost in a row), whose
  survival is the posterior predictive of a Dirichlet process ::

      S_loss(t) = (n(> t) + c * G(t)) / (n + c),   G(t) = q ** (t / u - 1.5)

  ``n(> t)`` is the weight of the peer's remembered loss gaps longer than ``t`` (a
  histogram: one bucket per number of pings lost up to ``FINE``, then log-spaced up to
  ``TOP`` = 64 intervals; linear within a bucket), ``n`` their total weight. ``G`` is the
  base measure: the geometric burst length of a Gilbert-Elliott channel, ``q`` the chance
  that a lost ping is followed by another -- its Beta posterior from the peer's own bursts
  of up to ``FINE`` = 8 lost pings (k lost pings are k - 1 continuations and one end;
  longer silences are outages, in the histogram but not in ``q``), with prior mean ``p``,
  i.e. independent losses. ``c`` (``tail_prior``) is the weight of that prior in loss gaps;
* ``p`` is itself a Beta posterior: (n + ``PRIOR_LOSS * PRIOR_WEIGHT``) / (all gaps +
  ``PRIOR_WEIGHT``), a prior of 1 % of gaps with a loss, worth 100 heartbeats.

So ``P(gap > t) = (1 - p) * normal survival + p * S_loss(t)``. Within the lengths a peer
has survived the empirical part speaks ("it has been silent this long before, this
often"); beyond them the geometric tail fitted to the same bursts takes over, so a
never-seen length is improbable, not impossible, and a peer that has had 3-ping bursts
gets some slack for a 4-ping one. A quiet peer has no loss gaps, so q = p and two pings
lost in a row have probability about p**2: phi 5.3 or more at 25 s of silence once it has
an hour of history -- declared on its 2nd miss. A peer with less than ~90 heartbeats of
history (15 min at 10 s) has a larger p (the prior weighs more) and is declared on its 3rd.

Memory: every count and sum decays by half every ``window`` learned heartbeats (default
1,000, ~2.8 h at 10 s), so the history is ``BUCKETS`` floats and a few scalars however long
the peer lives, and a burst keeps excusing silences as long as its own for hours: one 4-ping
burst stops excusing a 4-ping silence of an otherwise quiet peer 4,000-6,000 heartbeats
later (11-17 h at 10 s).

Other details (the first two as in Akka's implementation):

* ``acceptable_pause`` seconds of silence are forgiven outright (subtracted from ``t``);
* the mean is never below ``expected_interval``, nor is the unit ``u``; with fewer than
  ``MIN_SAMPLES`` gaps the configured interval and the std floor are used for the body;
* ``u`` is the peer's median gap, tracked (``TRACK_STEP``); when it moves by more than
  ``RELEARN_RATIO`` the ping interval was changed, and the history starts over;
* a gap of ``TOP`` intervals or more is an outage, not a late heartbeat: not learned. A
  shorter outage *is* learned and, like a burst, excuses silences as long as itself for
  hours: after a 2-minute outage of a quiet peer, its next crash is declared after 120-140
  s of silence instead of 25 s (measured 17 min, 2.8 h and 8 h later; after a 5-minute one,
  310-355 s). A caller that knows a gap was an outage (e.g. indirect probes failed too)
  should pass ``learn=False``.

clawd pings a peer every ``expected_interval`` seconds and a failed ping is only known
when its timeout expires, so detection happens at ping results: a peer that stopped is
seen after its 1st, 2nd, 3rd ... failed ping at about 15, 25, 35 s (10 s interval, 5 s
timeout) since its last heartbeat. On ``bench/detector_traces.py``'s seeded traces (2,000
peers x 6 h: quiet LAN, Wi-Fi, bursty Gilbert-Elliott and crashing peers; figures in
bench/results.md, section ``detector-traces``), with the defaults, accrual has 0.08x the
threshold detector's false offlines (534 vs 7,077; none on LAN peers, 2 on Wi-Fi) and a median
detection time of 0.78x (23.6 s vs 30.2 s: quiet peers are declared on their 2nd miss).
426 of its 534 false offlines are a bursty peer's first burst of 2 or more lost pings,
when its history looked quiet: a learning cost that the 6-h traces charge to every bursty
peer and a long-running daemon charges once per peer. The price is paid by bursty peers
that really crash: they are given the slack their bursts earned (detection median 78 s,
p95 108 s for them; p95 over all crashed peers 94 s vs 35 s for the threshold detector).

The threshold detector (``kind="threshold"``) is clawd's original rule: offline after
``offline_after_missed`` failed pings in a row. It gets the same interface so the two can
be swapped by configuration and compared on the same traces.

Everything here is pure (no clock, no I/O) and cheap -- the daemon calls it for every ping
of 1,000 peers every 10 s: ``record_heartbeat`` is O(``BUCKETS``) (a decay of every count,
3-5 us), ``suspicion`` one bisect and one C-level sum over at most ``BUCKETS`` floats
(1.5-2.5 us; both on a 2-core machine, the spread is its load): < 0.1 % of one core.
"""

from __future__ import annotations

import functools
import math
import operator
import sys
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat

# -- the gap histogram ------------------------------------------------------------------------
# Gaps are measured in units of the peer's own ping interval (its median gap, tracked).
# A gap shorter than REGULAR_MAX units is "regular" (no ping lost): it goes into the
# normal fit. A longer one is a "loss gap" and goes into the histogram, whose buckets are
# one interval wide (1, 2, ... FINE lost pings in a row: bursts, which also feed the
# geometric tail) and then log-spaced up to TOP (outages: the histogram only).
REGULAR_MAX = 1.5
FINE = 8
COARSE = 16
TOP = 64.0
_FINE_TOP = REGULAR_MAX + FINE
EDGES: tuple[float, ...] = (
    *(REGULAR_MAX + i for i in range(FINE)),
    *(_FINE_TOP * (TOP / _FINE_TOP) ** (i / COARSE) for i in range(COARSE)),
    TOP,
)
BUCKETS = len(EDGES) - 1
_EMPTY: tuple[float, ...] = (0.0,) * BUCKETS

# The prior on how often a gap holds a lost ping: PRIOR_LOSS (1 %), worth PRIOR_WEIGHT
# heartbeats of evidence.
PRIOR_LOSS = 0.01
PRIOR_WEIGHT = 100.0

# The unit tracker: a multiplicative step towards each gap (it settles on the median gap).
# When it has moved by more than RELEARN_RATIO from the unit the histogram was started
# at, the ping interval was changed: the history starts over.
TRACK_STEP = 0.02
RELEARN_RATIO = 1.25

# With fewer learned gaps than this the normal fit says little: the configured interval
# and the std floor are used for the body instead.
MIN_SAMPLES = 3
# An absolute floor for the std, so that a zero min_std_fraction cannot divide by zero.
MIN_STD_SECONDS = 1e-3
# erfc() is exact to a few ulps up to here (erfc(10) ~ 2e-45); above it the log-space
# asymptotic expansion takes over, because erfc underflows to 0 near z = 27 (phi = inf).
_Z_TAIL = 10.0
_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
_PHI_MAX = sys.float_info.max
# Below this P(gap > t) the mixture is evaluated in log space (it would underflow).
_P_LOG = 1e-250
_PHI_LOG = -math.log10(_P_LOG)


@dataclass(frozen=True, slots=True)
class ArrivalHistory:
    """A peer's heartbeats: when the last one came, and what its gaps were like.

    Constant size however long the peer lives: ``counts`` is the exponentially decayed
    histogram of loss gaps (``BUCKETS`` floats, bucket ``i`` between ``EDGES[i]`` and
    ``EDGES[i + 1]`` intervals), ``regular`` the decayed weight, sum and sum of squares of
    the regular gaps (in intervals), ``runs`` the decayed count of lost pings that were
    followed by another lost one and of bursts that ended (bursts of up to ``FINE`` lost
    pings only), ``unit`` the tracked ping interval (s), ``anchor`` the unit the histogram was
    started at, ``learned`` how many gaps were learned in all.
    """

    last: datetime | None = None
    counts: tuple[float, ...] = _EMPTY
    regular: tuple[float, float, float] = (0.0, 0.0, 0.0)
    runs: tuple[float, float] = (0.0, 0.0)
    unit: float = 0.0
    anchor: float = 0.0
    learned: int = 0

    @property
    def intervals(self) -> range:
        """Kept for callers that count learned gaps: ``len(h.intervals) == h.learned``.

        The gaps themselves are no longer kept (see ``counts``); use ``learned``.
        """
        return range(self.learned)


@functools.lru_cache(maxsize=16)
def _decay(half_life: int) -> float:
    return math.exp(-math.log(2.0) / half_life)


def record_heartbeat(
    h: ArrivalHistory, at: datetime, *, window: int = 1000, learn: bool = True
) -> ArrivalHistory:
    """The history after a heartbeat (a successful ping) at ``at``.

    ``window`` is the memory's half-life, in learned heartbeats: every learned gap is
    worth half as much ``window`` heartbeats later.

    The gap since the previous heartbeat is learned only if ``learn``: pass ``False`` when
    the gap says nothing about the peer, e.g. clawd's own event loop was stalled. Do not
    pass ``False`` merely because the peer had been declared offline: a burst of losses
    that caused a false offline must be learned, or the peer is declared offline at every
    such burst. A gap of ``TOP`` intervals or more is an outage, not a late heartbeat: it
    is not learned. A heartbeat not newer than the last one (a late result) changes
    nothing.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    last = h.last
    if last is not None and at <= last:
        return h
    unit = h.unit
    if not learn or last is None:
        return ArrivalHistory(at, h.counts, h.regular, h.runs, unit, h.anchor, h.learned)
    gap = (at - last).total_seconds()
    if unit <= 0.0:  # the first gap sets the unit
        return _learn(ArrivalHistory(at, unit=gap, anchor=gap), 1.0, window)
    x = gap / unit
    if x >= TOP:
        return ArrivalHistory(at, h.counts, h.regular, h.runs, unit, h.anchor, h.learned)
    unit = unit * (1.0 + TRACK_STEP) if gap > unit else unit / (1.0 + TRACK_STEP)
    if not h.anchor / RELEARN_RATIO <= unit <= h.anchor * RELEARN_RATIO:
        # The ping interval was changed: what was learned is in the wrong unit.
        return ArrivalHistory(at, unit=unit, anchor=unit)
    return _learn(
        ArrivalHistory(at, h.counts, h.regular, h.runs, unit, h.anchor, h.learned), x, window
    )


def _learn(h: ArrivalHistory, x: float, window: int) -> ArrivalHistory:
    """``h`` with everything decayed one step and a gap of ``x`` intervals added."""
    d = _decay(window)
    counts = h.counts
    n0, n1, n2 = h.regular
    cont, stop = h.runs
    n0, n1, n2, cont, stop = n0 * d, n1 * d, n2 * d, cont * d, stop * d
    if x < REGULAR_MAX:
        counts = tuple(map(operator.mul, counts, repeat(d)))
        n0, n1, n2 = n0 + 1.0, n1 + x, n2 + x * x
    else:
        b = bisect_right(EDGES, x) - 1
        decayed = list(map(operator.mul, counts, repeat(d)))
        decayed[b] += 1.0
        counts = tuple(decayed)
        if b < FINE:  # b + 1 pings lost: b continuations, then an end
            cont, stop = cont + b, stop + 1.0
    return ArrivalHistory(
        h.last, counts, (n0, n1, n2), (cont, stop), h.unit, h.anchor, h.learned + 1
    )


def _phi_tail(z: float) -> float:
    # -log10(erfc(z)) up to a constant, from erfc(z) ~ exp(-z^2) / (z sqrt(pi)) * (1 -
    # 1/(2z^2) + 3/(4z^4) - 15/(8z^6)); relative error < 1e-7 for z >= 10.
    w = 1.0 / (z * z)
    series = 1.0 - w * (0.5 - w * (0.75 - w * 1.875))
    return (z * z + math.log(z) - math.log(series)) / _LN10


_PHI_AT_TAIL = -math.log10(0.5 * math.erfc(_Z_TAIL))
_TAIL_AT_TAIL = _phi_tail(_Z_TAIL)


def _phi_normal(elapsed: float, mean: float, std: float) -> float:
    """-log10 P(X > elapsed) for X ~ N(mean, std)."""
    z = (elapsed - mean) / (std * _SQRT2)
    if z < _Z_TAIL:
        value = -math.log10(0.5 * math.erfc(z))
        return value if value > 0.0 else 0.0  # erfc(z) <= 2, but -0.0 reads oddly
    # Anchored at the switch point, so phi stays continuous and non-decreasing across it.
    value = _PHI_AT_TAIL + (_phi_tail(z) - _TAIL_AT_TAIL)
    return value if value < _PHI_MAX else _PHI_MAX


def phi(
    h: ArrivalHistory,
    now: datetime,
    *,
    expected_interval: float,
    min_std_fraction: float = 0.1,
    acceptable_pause: float = 0.0,
    tail_prior: float = 0.5,
) -> float:
    """-log10 of the probability that the next heartbeat comes later than ``now``.

    0.0 before the first heartbeat (there is no silence to measure). Finite for any gap,
    and never decreasing as ``now`` advances.
    """
    if not expected_interval > 0.0:
        raise ValueError(f"expected_interval must be positive, not {expected_interval}")
    if not tail_prior > 0.0:
        raise ValueError(f"tail_prior must be positive, not {tail_prior}")
    if h.last is None:
        return 0.0
    elapsed = (now - h.last).total_seconds() - acceptable_pause
    std = min_std_fraction * expected_interval
    if std < MIN_STD_SECONDS:
        std = MIN_STD_SECONDS
    # A unit below the configured interval is jitter, or a history learned under a shorter
    # interval: taking the larger keeps a lengthened interval from making peers look overdue.
    unit = h.unit if h.unit > expected_interval else expected_interval
    mean = expected_interval
    n0, n1, n2 = h.regular
    if h.learned >= MIN_SAMPLES and n0 > 0.0:
        m = n1 / n0
        var = n2 / n0 - m * m
        if m * h.unit > mean:
            mean = m * h.unit
        if var > 0.0 and math.sqrt(var) * h.unit > std:
            std = math.sqrt(var) * h.unit

    counts = h.counts
    lost = sum(counts[::-1])  # in the order of the partial sums below: the same at x = 1.5
    p = (lost + PRIOR_LOSS * PRIOR_WEIGHT) / (n0 + lost + PRIOR_WEIGHT)
    cont, stop = h.runs
    q = (cont + tail_prior * p) / (cont + stop + tail_prior)
    x = elapsed / unit
    if x <= REGULAR_MAX:
        longer = lost
        log_geo = 0.0
    elif x < TOP:
        b = bisect_right(EDGES, x) - 1
        hi = EDGES[b + 1]
        # Summed from the top down, so that the total at an edge is the same sum either side.
        longer = sum(counts[:b:-1]) + counts[b] * ((hi - x) / (hi - EDGES[b]))
        log_geo = (x - REGULAR_MAX) * math.log(q)
    else:
        longer = 0.0
        log_geo = (x - REGULAR_MAX) * math.log(q)
    norm = lost + tail_prior
    tail = (longer + tail_prior * math.exp(log_geo)) / norm
    z = (elapsed - mean) / (std * _SQRT2)
    body = 0.5 * math.erfc(z) if z < _Z_TAIL else 0.0
    survival = (1.0 - p) * body + p * tail
    if survival > _P_LOG:
        value = -math.log10(survival)
        return value if value > 0.0 else 0.0
    # Far out: both parts in log space (the geometric tail always dominates there).
    log_tail = math.log(tail) if tail > 0.0 else math.log(tail_prior / norm) + log_geo
    log_b = math.log(p) + log_tail
    log_a = math.log1p(-p) - _phi_normal(elapsed, mean, std) * _LN10
    hi_log = log_a if log_a > log_b else log_b
    log_s = hi_log + math.log1p(math.exp(-abs(log_a - log_b)))
    value = -log_s / _LN10
    if value < _PHI_LOG:
        return _PHI_LOG
    return value if value < _PHI_MAX else _PHI_MAX
