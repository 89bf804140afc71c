"""Split brain: two daemons that cannot see each other both lead; the peer fences them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess
from fleetops_helpers import machine, make_home
from sshpeers import SshFleet, SshPeer

INTERVAL = 0.3
FENCE = ".openclaw/.claw-clan-fence"

# Counts its runs, then waits for the test's go-ahead: the second leader's attempt
# surely falls inside the first one's install, which is the race the fence must win.
SLOW_INSTALL = """#!/bin/sh
set -e
echo "run $$" >> "$HOME/install-runs"
n=0
while [ ! -e "$HOME/go" ] && [ "$n" -lt 150 ]; do sleep 0.1; n=$((n + 1)); done
touch "$HOME/.openclaw/claw-clan/installed"
"""


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


def _config(gid: str, lead: int, bare: SshPeer) -> dict[str, Any]:
    # Each knows only the bare peer (static, no discovery): neither sees the other,
    # so each elects itself.
    target = {
        "name": "target",
        "gatewayId": "gw-t",
        "ip": bare.address,
        "sshPort": bare.port,
        "sshUser": "claw",
    }
    return {
        "instance": {"gatewayId": gid, "name": gid, "leadNumber": lead, "ip": "127.0.42.1"},
        "peers": [target],
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25, "offlineAfterMissed": 3},
        "ssh": {
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 0.5,
            # Installed only once the install command has finished, not once copied.
            "installCheckCommand": "test -f ~/.openclaw/claw-clan/installed",
        },
    }


def _reinstalls(daemon: DaemonProcess) -> list[dict[str, Any]]:
    path = daemon.home / "incidents.jsonl"
    rows = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r["eventType"] == "reinstall"]


async def _first_log(daemons: dict[str, DaemonProcess], needle: str, timeout: float) -> str:
    """The gateway id of the first daemon whose log has `needle`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for gid, daemon in daemons.items():
            daemon.read()
            if needle in daemon.log:
                return gid
            assert daemon.proc.poll() is None, f"{gid} exited:\n{daemon.log}"
        await asyncio.sleep(0.05)
    logs = "\n".join(f"--- {g}\n{d.log}" for g, d in daemons.items())
    raise AssertionError(f"no {needle!r} within {timeout}s:\n{logs}")


async def test_two_leaders_that_cannot_see_each_other_reinstall_a_peer_once(
    tmp_path: Path, fleet: SshFleet
) -> None:
    bare_root = tmp_path / "bare"
    bare = await machine(fleet, bare_root, "127.0.42.20")
    daemons: dict[str, DaemonProcess] = {}
    started = time.monotonic()
    try:
        for gid, lead in (("gw-a", 1), ("gw-b", 2)):
            home = tmp_path / gid
            home.mkdir()
            sections = _config(gid, lead, bare)
            make_home(home, fleet, install_script=SLOW_INSTALL, **sections)
            daemons[gid] = DaemonProcess(home)
        for daemon in daemons.values():
            await daemon.await_log("event=ready")
        # Both act; the one that claims the peer second is turned away by its fence
        # (STALE when it ranks lower, ALREADY when it ranks higher) while the first
        # one's install is still running.
        loser = await _first_log(daemons, "event=reinstall_fenced", 20)
        (bare_root / "go").touch()
        async with asyncio.timeout(20):
            while not any(_reinstalls(d) for d in daemons.values()):
                await asyncio.sleep(0.05)
        # Both claimed in epoch 1 (each one's first leadership): the lower lead number
        # holds the peer. The fenced one, still leading in its own view, starts a newer
        # epoch (a leader_change it records) and may push config then, but the peer is
        # installed by now: no second reinstall in any epoch.
        await asyncio.sleep(INTERVAL * 10)  # time for either to act wrongly
    finally:
        codes = {gid: d.stop() for gid, d in daemons.items()}
    elapsed = time.monotonic() - started
    assert codes == {"gw-a": 0, "gw-b": 0}
    runs = (bare_root / "install-runs").read_text().splitlines()
    assert len(runs) == 1, runs
    reinstalls = [r for d in daemons.values() for r in _reinstalls(d)]
    assert len(reinstalls) == 1, reinstalls
    assert reinstalls[0]["details"]["outcome"] == "ok"
    assert reinstalls[0]["gatewayId"] == "gw-t"
    assert not _reinstalls(daemons[loser])
    epoch, _lead, holder = (bare_root / FENCE / "token").read_text().split()
    assert bytes.fromhex(holder).decode() in ("gw-a", "gw-b")
    markers = [p.name for p in (bare_root / FENCE).glob("reinstall-*")]
    assert len(markers) <= 1 and all(int(m.split("-")[1]) <= int(epoch) for m in markers)
    # A fenced leader moved past the epoch it was refused in, and said so.
    # A leader refused as stale moved past the epoch it was refused in, and said so.
    for daemon in [d for d in daemons.values() if "reason=stale_leader" in d.log]:
        assert "seen on a peer" in daemon.log, daemon.log
    assert (bare_root / ".openclaw" / "claw-clan" / "installed").exists()
    for daemon in daemons.values():
        assert "Traceback" not in daemon.log
    assert elapsed < 40
