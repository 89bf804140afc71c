"""A writer killed with SIGKILL at any moment leaves the old file or the new one, never a mix."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from clawd.core.atomic import write_atomic

WRITER = r"""
import json, sys
from pathlib import Path
from clawd.core.atomic import write_atomic
target = Path(sys.argv[1])
n = 0
while True:
    n += 1
    body = {"version": n, "payload": chr(97 + n % 26) * 300_000}
    write_atomic(target, json.dumps(body).encode())
    if n == 1:
        print("started", flush=True)
"""

ITERATIONS = 25


def _check(path: Path) -> int:
    data = json.loads(path.read_bytes())
    version = data["version"]
    assert data["payload"] == chr(97 + version % 26) * 300_000
    return int(version)


def test_sigkill_mid_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "peer.json"
    write_atomic(target, json.dumps({"version": 0, "payload": "a" * 300_000}).encode())
    rng = random.Random(1234)
    versions = []
    deadline = time.monotonic() + 60
    for _ in range(ITERATIONS):
        assert time.monotonic() < deadline, "test ran too long"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started"
            time.sleep(rng.uniform(0, 0.03))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        versions.append(_check(target))  # parses and is internally consistent
    # The writer really was interrupted at different points, not idle.
    assert len(set(versions)) > ITERATIONS // 3
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "peer.json"]
    # Killed writers may leave temp files; they are hidden, and the store removes them at start.
    assert all(name.startswith(".peer.json.") and name.endswith(".tmp") for name in leftovers)


FULL_DISK_WRITER = r"""
import resource, signal, sys
from pathlib import Path
from clawd.core.atomic import write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_atomic(Path(sys.argv[1]), b"x" * 100_000)
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


def test_write_that_runs_out_of_space_keeps_the_old_file(tmp_path: Path) -> None:
    """Like a full disk: the write fails, the previous content stays, no temp file remains."""
    target = tmp_path / "state.json"
    write_atomic(target, b'{"ok": 1}')
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITER, str(target)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == ["OSError", "27"]  # EFBIG
    assert target.read_bytes() == b'{"ok": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
