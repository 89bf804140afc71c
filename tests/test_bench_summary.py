"""`make bench` gathers every figure with a goal into one summary table at the top."""

from __future__ import annotations

from pathlib import Path

from bench.run import SUMMARY, _summary_first, summary, update_section


def test_summary_lists_goal_rows_of_every_section_and_comes_first(tmp_path: Path) -> None:
    path = tmp_path / "results.md"
    update_section(
        path,
        "alpha",
        "## A\n\n| figure | goal | measured | ratio |\n|---|---|---|---|\n"
        "| rows/s | ≥ 50 | 60 | 1.20 ✓ |\n| lag ms | ≤ 5 | 9 | 1.80 ✗ |\n"
        "| rate | phase |\n|---|---|\n| 100 | baseline |\n",
    )
    update_section(
        path, "beta", "## B\n\n| figure | goal | measured | ratio |\n| stall | 0 | 0 | ✓ |\n"
    )
    for _ in range(2):  # a second run replaces the summary, never duplicates it
        update_section(path, SUMMARY, summary(path.read_text()))
        _summary_first(path)
    text = path.read_text()
    assert text.count("## Summary") == 1
    assert text.index("## Summary") < text.index("## A") < text.index("## B")
    table = text[text.index("| benchmark |") : text.index("<!-- summary:end -->")]
    assert "| alpha | rows/s | ≥ 50 | 60 | 1.20 ✓ |" in table
    assert "| alpha | lag ms | ≤ 5 | 9 | 1.80 ✗ |" in table
    assert "| beta | stall | 0 | 0 | ✓ |" in table
    assert "baseline" not in table  # rows without a goal stay in their section
