"""bench/detector_traces.py at a tiny size: its traces, its figures, its markdown."""

from __future__ import annotations

from pathlib import Path

from bench import detector_traces as bench
from bench.run import _GOAL_ROW, BENCHMARKS, SUMMARY, summary, update_section

# Few peers, but half of them crash early enough to be seen going down.
TINY = bench.Plan(peers=16, hours=1.0, crash_fraction=0.5, crash_from_h=0.3)


def test_traces_follow_the_ping_schedule_and_the_crash() -> None:
    for index in range(8):
        tr = bench.make_trace(TINY, 7, index)
        assert tr == bench.make_trace(TINY, 7, index)
        gaps = [b - a for a, b in zip(tr.at, tr.at[1:], strict=False)]
        assert all(9.0 <= g <= 11.0 for g in gaps)
        assert len(tr.at) == len(tr.done) == len(tr.ok) >= 320
        for at, done, ok in zip(tr.at, tr.done, tr.ok, strict=True):
            assert at < done <= at + TINY.timeout
            if not ok:
                assert done == at + TINY.timeout
            if not tr.up(at):
                assert not ok
    assert [bench.make_trace(TINY, 7, i).profile for i in range(4)] == [
        "lan",
        "lan",
        "wifi",
        "lossy",
    ]


def test_tiny_run_is_deterministic_for_a_seed_and_renders_goal_rows(tmp_path: Path) -> None:
    first = bench.simulate(TINY, 7, cost_calls=100)
    again = bench.simulate(TINY, 7, cost_calls=100, workers=2)  # split across processes
    other = bench.simulate(TINY, 8, cost_calls=100)
    assert first.figures() == again.figures()
    assert first.figures()["threshold"] != other.figures()["threshold"]

    acc, thr = first.totals["accrual"], first.totals["threshold"]
    assert first.part.crashed == acc.crashed == thr.crashed > 0
    for t in (acc, thr):
        assert len(t.detections) + t.undetected == t.crashed
        assert all(d > 0 for d in t.detections)
        assert 0 < t.alive_h <= TINY.peers * TINY.hours
        assert t.false_suspects >= t.false_offlines
    # The threshold detector needs 3 misses: at least 2 intervals + a timeout after a crash.
    assert min(thr.detections) >= 2 * 9.0 + TINY.timeout
    assert len(first.part.grid) == len(bench.SWEEP_PHI) * len(bench.SWEEP_PRIOR)
    assert 0 <= acc.false_first <= acc.false_unseen <= acc.false_offlines
    assert first.suspicion_us["accrual"] > 0 and first.heartbeat_us > 0

    body = bench.render(first, quick=True)
    goals = [line for line in body.splitlines() if _GOAL_ROW.match(line.strip())]
    assert [g.split("|")[1].strip() for g in goals] == [
        "accrual false offlines vs threshold",
        "accrual median detection time vs threshold",
    ]
    assert "seed 7" in body and "### accrual" in body and "### threshold" in body
    assert "Sensitivity" in body and "**(default)**" in body

    # bench.run registers it, and its goal rows reach the summary table.
    assert bench.SECTION in BENCHMARKS
    path = tmp_path / "results.md"
    update_section(path, bench.SECTION, body)
    table = summary(path.read_text())
    update_section(path, SUMMARY, table)
    assert f"| {bench.SECTION} | accrual false offlines vs threshold |" in table
    assert f"| {bench.SECTION} | accrual median detection time vs threshold |" in table
