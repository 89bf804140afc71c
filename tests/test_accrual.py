"""The phi-accrual and threshold failure detectors, as a user of `clawd status` sees them."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawd.decide.accrual import BUCKETS, EDGES, FINE, TOP, ArrivalHistory, phi, record_heartbeat
from clawd.decide.suspicion import DetectorSettings, Suspicion, suspicion

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INTERVAL = 10.0
ACCRUAL = DetectorSettings()


def history(gaps: list[float], *, window: int = ACCRUAL.window) -> ArrivalHistory:
    """Heartbeats from T0 separated by `gaps` seconds, learned as the daemon would."""
    h = record_heartbeat(ArrivalHistory(), T0, window=window)
    t = T0
    for gap in gaps:
        t += timedelta(seconds=gap)
        h = record_heartbeat(h, t, window=window)
    return h


def jittered(n: int, rng: random.Random) -> list[float]:
    """`n` gaps of a quiet peer: every ping answered, 10 s +-10 % apart (the pinger's jitter)."""
    return [INTERVAL * rng.uniform(0.9, 1.1) for _ in range(n)]


def steady(n: int = 400, seed: int = 1) -> ArrivalHistory:
    """A quiet peer with `n` heartbeats of history (400: a little over an hour)."""
    return history(jittered(n, random.Random(seed)))


def bursty(n: int = 100, seed: int = 1) -> ArrivalHistory:
    """A peer that loses 2-5 pings in a row now and then: a few 30-60 s gaps."""
    rng = random.Random(seed)
    gaps = [INTERVAL * rng.uniform(0.9, 1.1) for _ in range(n)]
    for i in range(7, n, 15):
        gaps[i] = INTERVAL * rng.randint(3, 6) * rng.uniform(0.9, 1.1)
    return history(gaps)


def after(h: ArrivalHistory, seconds: float) -> datetime:
    assert h.last is not None
    return h.last + timedelta(seconds=seconds)


def phi_at(h: ArrivalHistory, seconds: float, s: DetectorSettings = ACCRUAL) -> float:
    return phi(
        h,
        after(h, seconds),
        expected_interval=INTERVAL,
        min_std_fraction=s.min_std_fraction,
        acceptable_pause=s.acceptable_pause,
    )


# -- a quiet peer ---------------------------------------------------------------------------


def test_steady_peer_phi_is_small_after_a_heartbeat_and_grows_with_silence() -> None:
    h = steady()
    assert phi_at(h, 1.0) < 0.01
    assert phi_at(h, INTERVAL) < 0.5  # the next ping is merely due
    values = [phi_at(h, t) for t in (5, 10, 12, 15, 20, 25, 30)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_steady_peer_is_offline_within_two_to_three_intervals_of_silence() -> None:
    h = steady()
    crossing = next(t / 10 for t in range(0, 600) if phi_at(h, t / 10) >= ACCRUAL.phi_offline)
    assert 1.5 * INTERVAL <= crossing <= 3 * INTERVAL
    # As the pinger sees it: 1st miss known at ~15 s, 2nd at ~25 s, 3rd at ~35 s.
    assert suspicion(ACCRUAL, h, 1, after(h, 14), INTERVAL)[0] is Suspicion.SUSPECT
    assert suspicion(ACCRUAL, h, 1, after(h, 16), INTERVAL)[0] is Suspicion.SUSPECT
    assert suspicion(ACCRUAL, h, 2, after(h, 24), INTERVAL)[0] is Suspicion.OFFLINE
    assert suspicion(ACCRUAL, h, 3, after(h, 35), INTERVAL)[0] is Suspicion.OFFLINE


def test_a_young_peer_gets_one_more_miss() -> None:
    # 50 heartbeats (8 min) say less about how rare a double loss is than 400 do.
    young, old = steady(50), steady(400)
    assert phi_at(young, 25) < ACCRUAL.phi_offline <= phi_at(old, 25)
    assert phi_at(young, 35) >= ACCRUAL.phi_offline


def test_a_peer_whose_last_ping_succeeded_is_never_suspected() -> None:
    h = steady()
    for gap in (25, 60, 3600, 10**7):
        level, value = suspicion(ACCRUAL, h, 0, after(h, gap), INTERVAL)
        assert level is Suspicion.NONE
        assert value >= ACCRUAL.phi_offline  # the score itself is still reported


# -- a bursty peer ------------------------------------------------------------------------------


def test_a_peer_with_bursty_losses_gets_more_slack_than_a_steady_one() -> None:
    quiet, lossy = steady(), bursty()
    for gap in (15, 25, 35, 45):
        assert phi_at(lossy, gap) < phi_at(quiet, gap)
    # Three pings lost in a row: unremarkable for the bursty peer, a crash for the quiet one.
    assert suspicion(ACCRUAL, quiet, 3, after(quiet, 35), INTERVAL)[0] is Suspicion.OFFLINE
    assert suspicion(ACCRUAL, lossy, 3, after(lossy, 35), INTERVAL)[0] is Suspicion.NONE
    # ... but its silence still ends in OFFLINE: later, after its longest bursts (60 s).
    assert suspicion(ACCRUAL, lossy, 20, after(lossy, 205), INTERVAL)[0] is Suspicion.OFFLINE


def test_a_silence_the_peer_survived_hours_ago_is_still_excused() -> None:
    rng = random.Random(2)
    # A 50 s silence (4 pings lost), then 1,200 quiet heartbeats: 3 h 20 min, far more
    # than the 100 gaps the first version of this detector remembered.
    survivor = history([*jittered(200, rng), 50.0, *jittered(1200, rng)])
    never = history(jittered(1401, random.Random(2)))
    # 4 pings lost again: the 4th failure is known ~45 s after the last heartbeat.
    assert suspicion(ACCRUAL, survivor, 4, after(survivor, 45), INTERVAL)[0] is not (
        Suspicion.OFFLINE
    )
    assert suspicion(ACCRUAL, never, 2, after(never, 25), INTERVAL)[0] is Suspicion.OFFLINE
    assert suspicion(ACCRUAL, never, 4, after(never, 45), INTERVAL)[0] is Suspicion.OFFLINE
    # A longer silence than it ever had is given some slack (the geometric tail), not forever.
    assert suspicion(ACCRUAL, survivor, 6, after(survivor, 65), INTERVAL)[0] is not (
        Suspicion.OFFLINE
    )
    assert suspicion(ACCRUAL, survivor, 15, after(survivor, 155), INTERVAL)[0] is (
        Suspicion.OFFLINE
    )


def test_decayed_memory_eventually_forgets_a_burst() -> None:
    rng = random.Random(3)
    burst = [*jittered(50, rng), 50.0]
    window = 100  # half-lives of 100 heartbeats, to keep the test short
    recent = history([*burst, *jittered(100, rng)], window=window)
    assert phi_at(recent, 45) < ACCRUAL.phi_offline
    values = []
    for quiet in (200, 400, 700, 1000):
        h = history([*burst, *jittered(quiet, random.Random(quiet))], window=window)
        values.append(phi_at(h, 45))
    assert values == sorted(values)  # the older the burst, the less it excuses
    assert values[-1] >= ACCRUAL.phi_offline
    # ... and a peer that never had one is well past that.
    assert phi_at(history(jittered(851, rng), window=window), 45) > values[-1]


def test_memory_is_bounded() -> None:
    rng = random.Random(4)
    gaps = jittered(10_000, rng)
    for i in range(0, 10_000, 37):
        gaps[i] *= rng.randint(2, 70)  # loss bursts, and some outages
    h = record_heartbeat(ArrivalHistory(), T0)
    t = T0
    sizes = set()
    for gap in gaps:
        t += timedelta(seconds=gap)
        h = record_heartbeat(h, t)
        sizes.add(len(h.counts))
    assert sizes == {BUCKETS} and len(ArrivalHistory().counts) == BUCKETS <= 64
    # The decayed weights stay below 1 / (1 - decay): about 1.44 half-lives of heartbeats.
    assert h.regular[0] + sum(h.counts) <= 1.45 * ACCRUAL.window
    assert h.learned == len(h.intervals) > 9_000  # outages of 64+ intervals are not learned


def test_loss_gaps_are_counted_by_the_pings_lost() -> None:
    never = 10**9  # a half-life far longer than the test: weights are counts
    h = history([*[10.0] * 20, 20.0, 10.0, 30.0, 10.0, 60.0, 10.0, 300.0, 10.0], window=never)
    assert h.unit == pytest.approx(INTERVAL, rel=0.03)
    counts = [round(c, 6) for c in h.counts]
    # 1, 2 and 5 pings lost: buckets 0, 1, 4; the 300 s gap (29 lost) a log-spaced one.
    assert counts[0] == counts[1] == counts[4] == 1.0
    assert sum(counts) == 4.0 and EDGES[FINE] <= 300.0 / h.unit
    # 0 + 1 + 4 continuations, then 3 ends; the 300 s gap is an outage, not a burst.
    cont, stop = h.runs
    assert (round(cont, 6), round(stop, 6)) == (5.0, 3.0)
    n0, n1, n2 = h.regular
    assert round(n0, 6) == 24 and n1 / n0 == pytest.approx(1.0, rel=0.03)
    assert n2 / n0 - (n1 / n0) ** 2 < 1e-3  # all exactly 10 s apart


# -- what is learned ------------------------------------------------------------------------------


def test_a_gap_not_learned_moves_the_last_heartbeat_only() -> None:
    h = steady(20)
    stalled = record_heartbeat(h, after(h, 300), learn=False)
    assert (stalled.counts, stalled.regular, stalled.runs, stalled.unit, stalled.learned) == (
        h.counts,
        h.regular,
        h.runs,
        h.unit,
        h.learned,
    )
    assert stalled.last == after(h, 300)
    assert phi_at(stalled, 5) == pytest.approx(phi_at(h, 5))
    learned = record_heartbeat(h, after(h, 300))
    assert learned.learned == len(learned.intervals) == h.learned + 1
    assert phi_at(learned, 35) < phi_at(stalled, 35)  # the 300 s gap did widen the tail


def test_an_outage_of_top_intervals_or_more_is_not_learned() -> None:
    h = steady(100)
    assert h.last is not None
    out = record_heartbeat(h, after(h, TOP * INTERVAL * 1.1))
    assert (out.counts, out.runs, out.learned) == (h.counts, h.runs, h.learned)


def test_a_learned_outage_excuses_about_as_long_a_silence() -> None:
    rng = random.Random(9)
    # A 2-minute outage (11 pings lost), then 1,000 quiet heartbeats (2.8 h).
    h = history([*jittered(400, rng), 120.0, *jittered(1000, rng)])
    assert h.runs == (0.0, 0.0)  # an outage: not a burst for the geometric tail
    crossing = next(t for t in range(0, 3600, 5) if phi_at(h, t) >= ACCRUAL.phi_offline)
    assert 120 <= crossing <= 150


def test_a_late_result_older_than_the_last_heartbeat_changes_nothing() -> None:
    h = steady(20)
    assert h.last is not None
    assert record_heartbeat(h, h.last - timedelta(seconds=3)) == h
    assert record_heartbeat(h, h.last) == h


def test_window_is_the_half_life_of_a_learned_gap() -> None:
    h = history([10.0, 20.0], window=50)  # one regular gap, then one with a lost ping
    assert h.counts[0] == 1.0
    for _ in range(50):
        h = record_heartbeat(h, after(h, 10.0), window=50)
    assert h.counts[0] == pytest.approx(0.5)
    h = record_heartbeat(h, after(h, 10.0), window=1)
    assert h.counts[0] == pytest.approx(0.25)


def test_a_changed_ping_interval_is_learned_afresh() -> None:
    h = bursty(400)
    assert h.unit == pytest.approx(INTERVAL, rel=0.05)
    restarts = 0
    for _ in range(200):  # the interval is now 30 s
        before = h.learned
        h = record_heartbeat(h, after(h, 30.0))
        restarts += h.learned < before
    assert restarts >= 1
    assert h.unit == pytest.approx(30.0, rel=0.05)
    assert sum(h.counts) < 1.0  # neither the old bursts nor the change are loss gaps now
    # A quiet 30 s peer: its 1st miss is known after 35 s, its 3rd after 95 s.
    assert phi(h, after(h, 35), expected_interval=30.0) < ACCRUAL.phi_offline
    assert phi(h, after(h, 95), expected_interval=30.0) >= ACCRUAL.phi_offline


def test_before_the_first_heartbeat_phi_is_zero_and_misses_are_counted() -> None:
    empty = ArrivalHistory()
    assert phi(empty, T0, expected_interval=INTERVAL) == 0.0
    levels = [suspicion(ACCRUAL, empty, m, T0, INTERVAL)[0] for m in range(5)]
    assert levels == [Suspicion.NONE, *[Suspicion.SUSPECT] * 2, *[Suspicion.OFFLINE] * 2]


def test_a_new_history_uses_the_configured_interval() -> None:
    h = history([10.0, 10.0])  # two gaps: too few to fit
    assert phi_at(h, 1) < 0.01
    assert phi_at(h, 35) >= ACCRUAL.phi_offline


def test_a_longer_ping_interval_does_not_make_a_quiet_peer_look_overdue() -> None:
    h = steady()  # learned at 10 s; the interval is now 30 s, so a miss is known at 35 s
    value = phi(h, after(h, 35), expected_interval=30.0)
    assert value < ACCRUAL.phi_suspect
    assert phi(h, after(h, 95), expected_interval=30.0) >= ACCRUAL.phi_offline


def test_acceptable_pause_forgives_that_much_silence() -> None:
    h = steady()
    paused = dataclasses.replace(ACCRUAL, acceptable_pause=10.0)
    assert phi_at(h, 25, paused) == pytest.approx(phi_at(h, 15))


# -- numbers --------------------------------------------------------------------------------------


def test_a_huge_gap_gives_a_finite_phi() -> None:
    h = steady()
    hour, decade = phi_at(h, 3600), phi_at(h, 10 * 365 * 86400)
    assert math.isfinite(hour) and math.isfinite(decade)
    assert ACCRUAL.phi_offline < hour < decade
    far = phi(h, datetime.max.replace(tzinfo=UTC), expected_interval=INTERVAL, min_std_fraction=0)
    assert math.isfinite(far) and far > decade


def test_phi_is_continuous_and_non_decreasing_where_erfc_hands_over_to_the_tail() -> None:
    h = steady()
    values = [phi_at(h, 10 + k / 1000) for k in range(10_000, 30_000, 3)]
    assert values == sorted(values)
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert max(steps) < 0.5  # no jump where the formula changes (around z = 10)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    gaps=st.lists(st.floats(0.5, 500.0), max_size=30),
    a=st.floats(-100.0, 1e9),
    b=st.floats(-100.0, 1e9),
    min_std_fraction=st.sampled_from([0.0, 0.05, 0.1, 0.5]),
    expected=st.floats(1.0, 600.0),
)
def test_phi_never_decreases_as_time_passes(
    gaps: list[float], a: float, b: float, min_std_fraction: float, expected: float
) -> None:
    h = history(gaps)
    early, late = sorted((a, b))
    values = [
        phi(h, after(h, t), expected_interval=expected, min_std_fraction=min_std_fraction)
        for t in (early, late)
    ]
    assert all(math.isfinite(v) and v >= 0.0 for v in values)
    assert values[0] <= values[1]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    lost=st.lists(st.tuples(st.integers(0, 80), st.floats(0.9, 1.1)), max_size=200),
    window=st.sampled_from([1, 10, 1000]),
    a=st.floats(-100.0, 1e9),
    b=st.floats(-100.0, 1e9),
    expected=st.floats(1.0, 600.0),
    tail_prior=st.sampled_from([0.01, 0.5, 5.0]),
    acceptable_pause=st.sampled_from([0.0, 5.0]),
)
def test_phi_never_decreases_for_peers_with_bursts_and_outages(
    lost: list[tuple[int, float]],
    window: int,
    a: float,
    b: float,
    expected: float,
    tail_prior: float,
    acceptable_pause: float,
) -> None:
    # Each gap: `k` pings lost in a row (up to outages past TOP intervals), jittered.
    h = history([INTERVAL * (k + 1) * jitter for k, jitter in lost], window=window)
    early, late = sorted((a, b))
    values = [
        phi(
            h,
            after(h, t),
            expected_interval=expected,
            tail_prior=tail_prior,
            acceptable_pause=acceptable_pause,
        )
        for t in (early, late)
    ]
    assert all(math.isfinite(v) and v >= 0.0 for v in values)
    assert values[0] <= values[1]


def test_phi_is_continuous_across_bucket_edges_and_the_log_space_switch() -> None:
    rng = random.Random(6)
    gaps = jittered(600, rng)
    for i in range(5, 600, 40):
        gaps[i] *= rng.choice([2, 3, 4, 6, 12, 30])
    for h, steepest in ((steady(), 0.1), (bursty(), 0.1), (history(gaps), math.inf)):
        values = [phi_at(h, k / 20) for k in range(0, 20 * 700)]  # 0-700 s, every 50 ms
        assert values == sorted(values)
        # No step where the formula changes. (Past the longest outage a peer had, phi may
        # rise steeply but continuously: the histogram's last weight runs out linearly.)
        assert max(b - a for a, b in itertools.pairwise(values)) < steepest
    # Far out, P(gap > t) is taken in log space: no step where it is.
    h = steady()
    switch = next(t for t in range(0, 100_000, 10) if phi_at(h, t) > 250.0)
    values = [phi_at(h, switch - 20 + k / 1000) for k in range(30_000)]
    assert values[0] < 250.0 < values[-1]
    assert values == sorted(values)
    assert max(b - a for a, b in itertools.pairwise(values)) < 0.01


# -- the threshold detector and the settings ------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 5])
def test_threshold_kind_is_offline_after_n_consecutive_misses(n: int) -> None:
    s = DetectorSettings(kind="threshold", offline_after_missed=n)
    h = bursty()
    for missed in range(n + 3):
        # Whatever the silence: the count decides, phi is only reported.
        for gap in (1.0, 36.0, 86400.0):
            level, value = suspicion(s, h, missed, after(h, gap), INTERVAL)
            want = (
                Suspicion.OFFLINE
                if missed >= n
                else Suspicion.SUSPECT
                if missed
                else Suspicion.NONE
            )
            assert level is want
            assert value == pytest.approx(phi_at(h, gap, s))


def test_settings_reject_inconsistent_thresholds() -> None:
    with pytest.raises(ValueError, match="phi_suspect"):
        DetectorSettings(phi_suspect=10.0, phi_offline=5.0)
    with pytest.raises(ValueError):
        DetectorSettings(window=0)
    with pytest.raises(ValueError, match="tail_prior"):
        DetectorSettings(tail_prior=0.0)
    with pytest.raises(ValueError):
        phi(steady(), T0, expected_interval=0.0)
    with pytest.raises(ValueError):
        record_heartbeat(steady(), T0, window=0)
