"""Detection in a running daemon: a frozen daemon doubts itself instead of declaring its
peers offline; `clawd status` shows phi and `--why` explains a peer's status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_cli
from sshpeers import SshFleet, SshPeer

INTERVAL = 0.3
PEERS = 6
STALL_SECONDS = 5.0
# Each echo is held back this long, so that most peers have a ping in flight when the
# daemon freezes: their timeouts fire late, all at once, when it resumes.
ECHO_DELAY = 0.2


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        peers = {}
        for n in range(PEERS):
            peer = await ssh_fleet.add_peer(f"127.0.7.{n + 2}")
            peer.echo_delay = ECHO_DELAY
            peers[f"gw-{n}"] = peer
        (keys / "known_hosts").write_text(ssh_fleet.known_hosts_text())
        yield ssh_fleet, peers


def _home(
    tmp_path: Path, name: str, ssh_fleet: SshFleet, peers: dict[str, SshPeer], **detection: Any
) -> Path:
    home = tmp_path / name
    home.mkdir()
    config = {
        "instance": {"gatewayId": "gw-me", "name": "me", "leadNumber": 1, "sshUser": "claw"},
        "peers": [
            {
                "name": f"name-{gid}",
                "gatewayId": gid,
                "ip": p.address,
                "sshPort": p.port,
                "sshUser": "claw",
                "leadNumber": 10,
            }
            for gid, p in peers.items()
        ],
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25},
        "detection": {"indirectProbes": 0, **detection},
        "ssh": {
            "knownHosts": str(ssh_fleet.directory / "known_hosts"),
            "clientKeys": [str(ssh_fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 0.5,
        },
        "discovery": {"enabled": False},
    }
    (home / "config.json").write_text(json.dumps(config))
    (home / "config.json").chmod(0o600)
    return home


async def _all_online(daemon: DaemonProcess, peers: dict[str, SshPeer]) -> None:
    for gid in peers:
        await daemon.wait_incident(gid, "online", timeout=20)
    # Enough heartbeats for the detector to know each peer's rhythm.
    await asyncio.sleep(30 * INTERVAL)


async def _freeze(daemon: DaemonProcess, seconds: float) -> None:
    """The daemon's process stops dead (a paused VM, a swap storm) while its peers go on."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)


async def _watch(daemon: DaemonProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        daemon.read()
        assert daemon.proc.poll() is None, daemon.log
        await asyncio.sleep(0.1)


def _events(daemon: DaemonProcess, event: str) -> list[str]:
    return [gid for gid, e in daemon.incidents() if e == event]


async def test_a_frozen_daemon_doubts_itself_instead_of_declaring_peers_offline(
    tmp_path: Path, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    ssh_fleet, peers = fleet
    home = _home(tmp_path, "guarded", ssh_fleet, peers)
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        await _all_online(daemon, peers)
        before = len(daemon.log)
        await _freeze(daemon, STALL_SECONDS)
        await _watch(daemon, 6.0)
        assert _events(daemon, "offline") == []
        assert _events(daemon, "partition") == []
        assert "event=peer_unresponsive" not in daemon.log[before:]
        doubts = [line for line in daemon.log.splitlines() if "event=self_doubt" in line]
        assert len(doubts) == 1, doubts  # recorded once
        assert "event loop stalled" in doubts[0]
        assert "event=self_trust" in daemon.log  # and it trusts itself again
        assert daemon.stop() == 0


async def test_without_the_guard_the_same_freeze_declares_peers_offline(
    tmp_path: Path, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    # The control experiment: the guard switched off by thresholds nothing reaches.
    ssh_fleet, peers = fleet
    home = _home(
        tmp_path,
        "unguarded",
        ssh_fleet,
        peers,
        guardLoopLagSeconds=600,
        guardMinPeers=100_000,
        partitionMinPeers=100_000,
    )
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        await _all_online(daemon, peers)
        before = len(daemon.log)
        await _freeze(daemon, STALL_SECONDS)
        await _watch(daemon, 4.0)
        # The pings in flight "timed out" only because clawd itself was frozen: without
        # the guard their peers are wrongly reported unresponsive.
        assert "event=peer_unresponsive" in daemon.log[before:], daemon.log[before:]
        assert "event=self_doubt" not in daemon.log
        assert daemon.stop() == 0


async def test_status_shows_phi_and_why_explains_a_peer(
    tmp_path: Path, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    ssh_fleet, peers = fleet
    home = _home(tmp_path, "why", ssh_fleet, peers)
    idle = await asyncio.to_thread(run_cli, home, "status", "--why", "name-gw-1")
    assert idle.returncode == 2
    assert "needs the running daemon" in idle.stderr and "Traceback" not in idle.stderr
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        await _all_online(daemon, peers)
        await peers["gw-1"].stop()
        await daemon.wait_incident("gw-1", "offline", timeout=15)
        why = await asyncio.to_thread(daemon.cli, "status", "--why", "name-gw-1")
        assert why.returncode == 0, why.stderr
        assert "offline" in why.stdout.splitlines()[0]
        assert "rule      detector-offline" in why.stdout
        assert "detector  accrual: phi" in why.stdout
        detail = json.loads(
            (await asyncio.to_thread(daemon.cli, "status", "--why", "gw-1", "--json")).stdout
        )
        assert detail["rule"] == "detector-offline"
        assert detail["phi"] >= detail["phiOffline"]
        assert detail["evidence"]["last_ping_ok"] is False
        ok = json.loads(
            (await asyncio.to_thread(daemon.cli, "status", "--why", "gw-2", "--json")).stdout
        )
        assert (ok["status"], ok["rule"]) == ("online", "ssh-ok")
        assert ok["phi"] < ok["phiSuspect"]
        table = await asyncio.to_thread(daemon.cli, "status")
        assert "PHI" in table.stdout.splitlines()[0]
        row = next(line for line in table.stdout.splitlines() if line.startswith("name-gw-1"))
        assert float(row.split()[-1]) >= 8.0
        missing = await asyncio.to_thread(daemon.cli, "status", "--why", "nobody")
        assert missing.returncode == 2 and "no peer" in missing.stderr
        assert daemon.stop() == 0
