"""Fixed latency buckets for the hourly rollup, and percentiles from merged histograms.

Bucket i (0-based) counts successful pings with LATENCY_BOUNDS_MS[i-1] < response_ms <=
LATENCY_BOUNDS_MS[i] (bucket 0: <= 1 ms); the last bucket, BUCKETS - 1, counts the
overflow above 10 s. A percentile is reported as the upper bound of the bucket holding
the ping that percentile_disc would pick, but never above the exact maximum; in the
overflow bucket it is the maximum itself. For whole-millisecond latencies up to 10 s the
reported value r and the exact one v satisfy v <= r <= v · (1 + MAX_RELATIVE_ERROR).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

# Log-spaced, 10 per decade from 1 ms to 10 s, rounded to whole ms, duplicates dropped.
LATENCY_BOUNDS_MS: tuple[int, ...] = tuple(sorted({round(10 ** (k / 10)) for k in range(41)}))
BUCKETS = len(LATENCY_BOUNDS_MS) + 1
# width_bucket() counts the thresholds <= a value; with integer latencies, thresholds at
# bound + 1 make the bounds inclusive upper limits.
WIDTH_THRESHOLDS: tuple[int, ...] = tuple(b + 1 for b in LATENCY_BOUNDS_MS)
# The worst case of an integer v just above a bound reported as the next bound.
MAX_RELATIVE_ERROR = max(hi / (lo + 1) - 1 for lo, hi in itertools.pairwise(LATENCY_BOUNDS_MS))


def bucket_of(ms: int) -> int:
    """The 0-based bucket that holds a latency of `ms`."""
    return sum(1 for t in WIDTH_THRESHOLDS if t <= ms)


def percentile(hist: Sequence[int], q: float, max_ms: int | None) -> int | None:
    """percentile_disc(q) approximated from bucket counts (see the module docstring)."""
    total = sum(hist)
    if total == 0 or max_ms is None:
        return None
    rank = max(1, math.ceil(q * total))  # percentile_disc: the rank-th smallest value
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return max_ms if i >= len(LATENCY_BOUNDS_MS) else min(LATENCY_BOUNDS_MS[i], max_ms)
    return max_ms


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Element-wise sum of two histograms of BUCKETS counts."""
    return [x + y for x, y in zip(a, b, strict=True)]
