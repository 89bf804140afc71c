"""Fault injection: the home directory's file system fills up under a running daemon.

CLAW_HOME is a 2 MB tmpfs (skipped, with the reason, where mounting is not allowed). A
filler file takes every free byte while `clawd run` pings three peers and one of them goes
down (so peer files, fleet.json and incidents.jsonl all want writing). Then:

* the log says so clearly, a bounded number of lines per kind of failure (not a flood);
* monitoring goes on: the pinger's counters keep growing (`clawd status --live --json`);
* no JSON file is half-written: all of them parse;
* when space returns (the filler is deleted), writes succeed again: the peer's file
  and incidents.jsonl show its recovery.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from daemonproc import DaemonProcess
from faulthelpers import assert_store_parses, daemon_config, three_peers
from sshpeers import SshFleet, SshPeer

pytestmark = pytest.mark.timeout(90)

INTERVAL = 0.2
FULL_FOR_SECONDS = 3.0
MAX_LINES_PER_KIND = 3  # "cannot write" lines of one kind while the disk stays full


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(home)],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        pytest.skip(f"cannot mount a small tmpfs as the home (needs root): {detail}")
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False, capture_output=True, timeout=10)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    async with three_peers(tmp_path, "gw-f", 40) as fleet:
        yield fleet


def fill(path: Path) -> int:
    """Write zeros to `path` until the file system is full; the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as out:
        while True:
            try:
                written += out.write(chunk) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return written


def pings_sent(daemon: DaemonProcess) -> int:
    proc = daemon.cli("status", "--live", "--json")
    daemon.read()
    assert proc.returncode == 0, f"{proc.stderr}\n{daemon.log[-4000:]}"
    return int(json.loads(proc.stdout)["pinger"]["pings_sent"])


def error_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "level=error" in ln or "level=warning" in ln]


def kind(line: str) -> str:
    match = re.search(r"\bevent=(\S+)", line)
    return match.group(1) if match else line[:40]


async def test_disk_full_is_reported_survived_and_recovered(
    small_home: Path, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    ssh_fleet, peers = fleet
    home = small_home
    config = daemon_config(ssh_fleet, peers, interval=INTERVAL)
    (home / "config.json").write_text(json.dumps(config))
    (home / "config.json").chmod(0o600)
    filler = home / "filler"

    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=ready")
        for gid in peers:
            await daemon.wait_incident(gid, "online", 10)
        peer_file = home / "peers" / "gw-f1.json"
        log_before = len(daemon.log)

        # The disk fills up; then a peer goes down, so the daemon has things to write.
        await asyncio.to_thread(fill, filler)
        free = os.statvfs(home)
        assert free.f_bavail == 0, "the filler should take every free block"
        before = pings_sent(daemon)
        await peers["gw-f1"].stop()
        await asyncio.sleep(FULL_FOR_SECONDS)
        daemon.read()
        assert daemon.proc.poll() is None, f"clawd died on a full disk:\n{daemon.log[-3000:]}"
        during = pings_sent(daemon)
        # Pings go on: three peers every 0.2 s for 3 s is ~45 attempts.
        assert during - before >= 15, (before, during)

        full_log = daemon.log[log_before:]
        problems = [ln for ln in error_lines(full_log) if "No space left" in ln]
        assert problems, f"no clear error line about the full disk:\n{full_log[-3000:]}"
        per_kind: dict[str, int] = {}
        for line in problems:
            per_kind[kind(line)] = per_kind.get(kind(line), 0) + 1
        assert all(n <= MAX_LINES_PER_KIND for n in per_kind.values()), per_kind
        assert "Traceback" not in full_log, full_log[-3000:]
        assert_store_parses(home)  # nothing half-written
        assert json.loads(peer_file.read_text())["status"] == "online"  # the old version

        # Space comes back: new writes succeed, the peer file catches up.
        filler.unlink()
        await peers["gw-f1"].start()
        deadline = time.monotonic() + 15
        while True:
            status = json.loads(peer_file.read_text())["status"]
            events = daemon.incidents()
            if status == "online" and ("gw-f1", "recovery") in events:
                break
            assert time.monotonic() < deadline, (status, events, daemon.log[-2000:])
            await asyncio.sleep(0.1)
        assert_store_parses(home)
        after = pings_sent(daemon)
        assert after > during
        daemon.read()
        assert "event=json_write_recovered" in daemon.log[log_before:]
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log[-3000:]
