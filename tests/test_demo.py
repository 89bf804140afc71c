"""`scripts/demo.py --fast` end to end: the story, a backup, the listings, no leftovers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"
RUN_LIMIT = 85.0  # seconds; the fast story takes about 12


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for a non-reaping PID 1 counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _run_demo(record: Path) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), "--fast", "--record", str(record)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # its own cleanup, so a stuck run leaves nothing
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"demo still running after {RUN_LIMIT:.0f} s:\n{out}")
    return proc.returncode, out


def test_demo_tells_the_story_and_leaves_nothing_running(tmp_path: Path) -> None:
    record = tmp_path / "started.jsonl"
    code, out = _run_demo(record)
    assert code == 0, out

    story = out.split("$ clawd incidents")[0]
    for line in (
        "incident offline: charlie after",
        "incident recovery: charlie back after",
        "incident leader_change: alpha → bravo",
        "incident offline: alpha after",
        "✓ backup: claw_clan_",
        "clawd exited with 0",
    ):
        assert line in story, out
    assert story.index("charlie unresponsive") < story.index("incident offline: charlie"), out

    listing = out.split("$ clawd incidents", 1)[1].split("$ clawd report", 1)[0]
    for event in ("offline", "recovery", "leader_change"):
        assert event in listing, out
    assert "$ clawd report" in out, out

    started = [json.loads(line) for line in record.read_text().splitlines()]
    assert {item["what"] for item in started} >= {"tmp", "mdns", "clawd"}, started
    pids = [item["pid"] for item in started if item.get("pid")]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], started
    assert not [item["path"] for item in started if "path" in item and Path(item["path"]).exists()]
