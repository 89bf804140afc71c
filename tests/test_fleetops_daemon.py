"""Fleet operations in running daemons: one reinstall among three daemons; config delivery."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_cli
from fleetops_helpers import make_home, write_known_hosts
from sshpeers import SshFleet, SshPeer

INTERVAL = 0.3


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


def _peer_entry(gid: str, peer: SshPeer, lead: int | None) -> dict[str, Any]:
    return {
        "name": f"name-{gid}",
        "gatewayId": gid,
        "ip": peer.address,
        "sshPort": peer.port,
        "sshUser": "claw",
        "leadNumber": lead,
    }


def _sections(gid: str, lead: int, ip: str, peers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "instance": {"gatewayId": gid, "name": gid, "leadNumber": lead, "ip": ip},
        "peers": peers,
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25, "offlineAfterMissed": 3},
        "ssh": {"reconnectInitialSeconds": 0.2, "reconnectMaxSeconds": 0.5},
    }


async def _until_installed(daemon: DaemonProcess, gateway: str, seconds: float) -> None:
    """Until `daemon`'s live view has claw-clan installed on `gateway` (bounded)."""
    deadline = time.monotonic() + seconds
    while True:
        status = await asyncio.to_thread(run_cli, daemon.home, "status", "--json")
        rows = json.loads(status.stdout)["peers"] if status.stdout else []
        if any(r["gatewayId"] == gateway and r["installed"] is True for r in rows):
            return
        assert time.monotonic() < deadline, f"{gateway} not seen installed:\n{daemon.log}"
        await asyncio.sleep(0.3)


async def test_three_daemons_reinstall_a_bare_peer_exactly_once(
    tmp_path: Path, fleet: SshFleet
) -> None:
    # Three claw-clan machines (their sshd: asyncssh servers), each running clawd,
    # and one machine that came back without claw-clan.
    machines = {
        gid: await fleet.add_peer(f"127.0.5.{n}") for n, gid in ((11, "gw-a"), (12, "gw-b"))
    }
    machines["gw-c"] = await fleet.add_peer("127.0.5.13")
    bare_root = tmp_path / "bare"
    bare_root.mkdir()
    bare = await fleet.add_peer("127.0.5.20", root=bare_root)
    write_known_hosts(fleet)
    leads = {"gw-a": 1, "gw-b": 2, "gw-c": 3}
    daemons: dict[str, DaemonProcess] = {}
    try:
        for gid, machine in machines.items():
            others = [_peer_entry(o, p, leads[o]) for o, p in machines.items() if o != gid]
            home = tmp_path / gid
            home.mkdir()
            make_home(
                home,
                fleet,
                **_sections(
                    gid, leads[gid], machine.address, [*others, _peer_entry("gw-t", bare, None)]
                ),
            )
            daemons[gid] = DaemonProcess(home)
        for daemon in daemons.values():
            await daemon.await_log("event=ready")
        await daemons["gw-a"].wait_incident("gw-t", "reinstall", 20)
        # Every daemon's pinger sees claw-clan there now; give the others time to act wrongly.
        for daemon in daemons.values():
            await daemon.await_log("gateway=gw-t", 10)
        await asyncio.sleep(INTERVAL * 10)
        # The followers learn it from their own install check (every 10 rounds): on a
        # busy machine 10 rounds can take longer than 10 intervals, so wait for it.
        for gid in ("gw-b", "gw-c"):
            await _until_installed(daemons[gid], "gw-t", 30)
    finally:
        codes = {gid: d.stop() for gid, d in daemons.items()}
    assert codes == {"gw-a": 0, "gw-b": 0, "gw-c": 0}
    assert (bare_root / "install-runs").read_text() == "run\n"
    assert daemons["gw-a"].incidents().count(("gw-t", "reinstall")) == 1
    for gid in ("gw-b", "gw-c"):
        assert ("gw-t", "reinstall") not in daemons[gid].incidents()
        assert "reinstall_started" not in daemons[gid].log
    peer_file = json.loads((tmp_path / "gw-b" / "peers" / "gw-t.json").read_text())
    assert peer_file["clawClanInstalled"] is True
    for daemon in daemons.values():
        assert "Traceback" not in daemon.log


async def test_leader_delivers_config_to_peers_also_after_they_return(
    tmp_path: Path, fleet: SshFleet
) -> None:
    roots = {gid: tmp_path / gid for gid in ("gw-b", "gw-c", "gw-d")}
    peers: dict[str, SshPeer] = {}
    for n, (gid, root) in enumerate(roots.items()):
        (root / ".openclaw" / "claw-clan").mkdir(parents=True)
        peers[gid] = await fleet.add_peer(f"127.0.5.{n + 30}", root=root)
    write_known_hosts(fleet)
    await peers["gw-d"].stop()  # down when the daemon starts
    home = tmp_path / "home"
    home.mkdir()
    entries = [_peer_entry(gid, p, 10 + n) for n, (gid, p) in enumerate(peers.items())]
    _, config_path = make_home(home, fleet, **_sections("gw-a", 1, "127.0.5.29", entries))

    def remote(gid: str) -> dict[str, Any] | None:
        path = roots[gid] / ".openclaw" / "claw-clan" / "config.json"
        return json.loads(path.read_text()) if path.exists() else None

    async def until(check: Any, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)

    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=ready")
        await until(lambda: remote("gw-b") is not None and remote("gw-c") is not None)
        assert remote("gw-d") is None
        # On demand, through the running daemon: a table with the down peer failed.
        answer = await asyncio.to_thread(run_cli, home, "config", "push")
        assert answer.returncode == 1, answer.stderr
        assert "0 pushed, 2 unchanged, 1 failed" in answer.stdout
        assert "name-gw-d" in answer.stdout and "refused" in answer.stdout
        assert "when they come back" in answer.stderr

        await peers["gw-d"].start()
        await until(lambda: remote("gw-d") is not None)

        # An edit of config.json reaches every online peer.
        config = json.loads(config_path.read_text())
        config["ping"]["jitterFraction"] = 0.2
        config_path.write_text(json.dumps(config, indent=2))
        await until(
            lambda: all((remote(g) or {})["ping"].get("jitterFraction") == 0.2 for g in roots)
        )
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    for gid in roots:
        pushed = remote(gid)
        assert pushed is not None and "instance" not in pushed  # no one gets our identity
    assert daemon.log.count("event=config_pushed") == 6  # b, c, d once, then all three again
