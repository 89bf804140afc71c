"""From a peer's heartbeat history and missed pings to a verdict: which detector
(phi-accrual or "N missed pings"), its thresholds, and the level it gives.

The phi estimator itself is clawd/decide/accrual.py; this module only compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from clawd.decide.accrual import ArrivalHistory, phi


class Suspicion(StrEnum):
    """What a detector says about a peer right now."""

    NONE = "none"
    SUSPECT = "suspect"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Which detector, and its thresholds.

    Defaults chosen on ``bench/detector_traces.py`` (2,000 peers x 6 h; 10 s interval, 5 s
    timeout; figures in bench/results.md, section ``detector-traces``, with its
    ``phi_offline`` x ``tail_prior`` grid):

    * ``phi_offline`` 4.5: a quiet peer with an hour of history is at phi 5.3-6 after 2
      missed pings (25 s), so it is declared on its 2nd miss; at 6 that takes a 3rd miss
      and the median detection time is no better than the threshold's (1.01x). Lower
      values detect bursty peers sooner but excuse fewer bursts: 0.10x the threshold's
      false offlines at 4 (p95 detection 76 s), 0.08x at 4.5 (94 s), 0.06x at 5 (116 s).
      4.5 keeps a margin on the 0.10x goal (0.075-0.082x on seeds 2004, 2005 and 7).
    * ``tail_prior`` 0.5: the geometric tail counts as half a loss gap. More prior means
      more slack beyond the longest remembered burst: fewer false offlines (0.08x at
      0.25, 0.07x at 1 and 2) for later detection of bursty peers (p95 85, 94, 102, 109 s).
    * ``window`` 1,000: the half-life of the memory in heartbeats (~2.8 h at 10 s), long
      enough to hold several bursts of a peer that has one an hour, short enough that a
      burst stops excusing silences within a day. The 6-h traces barely tell half-lives
      apart -- they are too short to forget much: 500 / 1,000 / 2,000 gave 521 / 534 / 543
      false offlines and p95 detection 100 / 94 / 91 s, the same median.
    * ``min_std_fraction`` 0.1: the std floor for the regular gaps (1 s at 10 s; a quiet
      peer's jitter is ~0.6 s). It only shapes phi before the first missed ping: from the
      first miss on, the loss part dominates.
    * ``phi_suspect`` 2: on a first missed ping phi is about -log10(p), p the peer's share
      of gaps with a loss: 2.3-3.4 for a quiet peer, so it is suspect at once and indirect
      probes start; a bursty peer with a loss in more than 1 gap in 100 only when its
      silence is unusual for it.
    """

    kind: Literal["accrual", "threshold"] = "accrual"
    phi_suspect: float = 2.0
    phi_offline: float = 4.5
    offline_after_missed: int = 3
    window: int = 1000
    min_std_fraction: float = 0.1
    acceptable_pause: float = 0.0
    tail_prior: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.phi_suspect <= self.phi_offline:
            raise ValueError("need 0 < phi_suspect <= phi_offline")
        if self.offline_after_missed < 1 or self.window < 1:
            raise ValueError("offline_after_missed and window must be at least 1")
        if self.min_std_fraction < 0.0 or self.acceptable_pause < 0.0:
            raise ValueError("min_std_fraction and acceptable_pause must not be negative")
        if not self.tail_prior > 0.0:
            raise ValueError("tail_prior must be positive")


def _by_missed(missed: int, offline_after: int) -> Suspicion:
    if missed >= offline_after:
        return Suspicion.OFFLINE
    return Suspicion.SUSPECT if missed >= 1 else Suspicion.NONE


def suspicion(
    s: DetectorSettings,
    h: ArrivalHistory,
    missed: int,
    now: datetime,
    expected_interval: float,
) -> tuple[Suspicion, float]:
    """(level, phi) for a peer with history ``h`` and ``missed`` failed pings in a row.

    phi is computed for either kind, for display. The accrual detector never suspects a
    peer whose last ping succeeded (``missed == 0``), whatever the gap: the ping is newer
    evidence than the history. Before its first heartbeat a peer has no history to judge
    by, so the accrual detector counts misses like the threshold one.
    """
    value = phi(
        h,
        now,
        expected_interval=expected_interval,
        min_std_fraction=s.min_std_fraction,
        acceptable_pause=s.acceptable_pause,
        tail_prior=s.tail_prior,
    )
    if s.kind == "threshold" or h.last is None:
        return _by_missed(missed, s.offline_after_missed), value
    if missed == 0:
        return Suspicion.NONE, value
    if value >= s.phi_offline:
        return Suspicion.OFFLINE, value
    if value >= s.phi_suspect:
        return Suspicion.SUSPECT, value
    return Suspicion.NONE, value
