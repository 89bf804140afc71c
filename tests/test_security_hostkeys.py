"""SSH host keys are verified: an unknown key follows the policy, a changed key is refused
and reported, never overwritten — for pings (the daemon) and for fleet operations.

Related, not repeated here: tests/test_pinger.py
`test_changed_host_key_is_refused_under_accept_new` (the Pinger alone: error text, file
0600 and unchanged) and `test_known_hosts_policy_refuses_unknown_key_until_trusted`.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess
from fleetops_helpers import make_home
from sshpeers import SshFleet, SshPeer

from clawd.act.fleetops.distribution import push_many
from clawd.act.fleetops.payload import read_config
from clawd.act.fleetops.remote import PeerAddress, Reach
from clawd.sources.ssh_client import Connector

INTERVAL = 0.3


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


def _daemon_home(tmp_path: Path, fleet: SshFleet, peer: SshPeer, ssh: dict[str, Any]) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    config = {
        "backend": "json",
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 1, "sshUser": "claw"},
        "peers": [{"name": "beta", "gatewayId": "gw-b", "ip": peer.address, "sshPort": peer.port}],
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25, "offlineAfterMissed": 2},
        "ssh": {
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 0.5,
            **ssh,
        },
        "discovery": {"enabled": False},
        "recovery": {"enabled": False},
        "distribution": {"enabled": False},
    }
    path = home / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return home


def _status(daemon: DaemonProcess) -> dict[str, Any]:
    answer = daemon.cli("status", "--json", "--live")
    assert answer.returncode == 0, answer.stderr
    [row] = [r for r in json.loads(answer.stdout)["peers"] if r["gatewayId"] == "gw-b"]
    return dict(row)


async def _until_status(daemon: DaemonProcess, wanted: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (row := _status(daemon))["status"] != wanted:
        assert time.monotonic() < deadline, f"gw-b is {row}, not {wanted}:\n{daemon.log}"
        await asyncio.sleep(0.1)
    return row


async def test_unknown_host_key_is_refused_under_known_hosts_policy(
    tmp_path: Path, fleet: SshFleet
) -> None:
    peer = await fleet.add_peer("127.0.7.2")
    other = await fleet.add_peer("127.0.7.3")
    trusted = fleet.directory / "known_hosts"
    trusted.write_text(f"[{peer.address}]:{peer.port} {other.host_key_line}\n")  # not its key
    before = trusted.read_text()
    home = _daemon_home(
        tmp_path, fleet, peer, {"hostKeyPolicy": "known_hosts", "knownHosts": str(trusted)}
    )
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        line = await daemon.await_log("host key not trusted", timeout=10)
        assert "gateway=gw-b" in line and str(trusted) in line and "refused" in line
        # It answers TCP, so it is unresponsive, not online; and the SSH column says no.
        row = await _until_status(daemon, "unresponsive")
        assert row["ssh"] is False
        assert ("gw-b", "online") not in daemon.incidents()
        assert daemon.stop() == 0
    assert peer.authenticated == 0  # never got as far as logging in
    assert trusted.read_text() == before  # the user's file is not clawd's to edit
    assert not (home / "known_hosts").exists()


async def test_accept_new_records_the_first_key_and_refuses_a_changed_one(
    tmp_path: Path, fleet: SshFleet
) -> None:
    peer = await fleet.add_peer("127.0.7.4")
    home = _daemon_home(tmp_path, fleet, peer, {"hostKeyPolicy": "accept-new"})
    recorded_file = home / "known_hosts"
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        await daemon.wait_incident("gw-b", "online", 10)
        line = await daemon.await_log("host_key_recorded")
        assert f"host={peer.address}" in line and str(recorded_file) in line
        recorded = recorded_file.read_text()
        assert peer.host_key_line in recorded
        assert stat.S_IMODE(recorded_file.stat().st_mode) == 0o600
        logins = peer.authenticated

        await peer.change_host_key()
        line = await daemon.await_log("host key changed", timeout=10)
        assert "gateway=gw-b" in line and "refused" in line
        row = await _until_status(daemon, "unresponsive")
        assert row["ssh"] is False
        assert daemon.stop() == 0
    assert peer.authenticated == logins  # no login to the impostor
    assert recorded_file.read_text() == recorded  # never overwritten
    assert peer.host_key_line not in recorded


async def test_config_push_to_a_changed_host_key_fails_and_writes_nothing(
    tmp_path: Path, fleet: SshFleet
) -> None:
    root = tmp_path / "peer"
    (root / ".openclaw" / "claw-clan").mkdir(parents=True)  # claw-clan is installed
    peer = await fleet.add_peer("127.0.7.6", root=root)
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet, ssh={"hostKeyPolicy": "accept-new"})
    connector = Connector(settings.ssh, settings.home)
    target = PeerAddress("gw-b", "beta", peer.address, peer.port, "claw")
    ours, _ = await asyncio.to_thread(read_config, config_path)
    [first] = await push_many(Reach(connector), [target], ours, settings)
    assert first.result == "pushed", first.detail
    remote = root / ".openclaw" / "claw-clan" / "config.json"
    delivered = remote.read_bytes()
    recorded = (home / "known_hosts").read_text()

    await peer.change_host_key()
    ours["ping"] = {"intervalSeconds": 30}  # something new to push
    [second] = await push_many(Reach(connector), [target], ours, settings)
    assert second.result == "failed"
    assert "host key changed" in second.detail
    assert remote.read_bytes() == delivered  # nothing written
    assert sorted(p.name for p in remote.parent.iterdir()) == ["config.json"]  # no temp file
    assert (home / "known_hosts").read_text() == recorded


async def test_config_push_to_an_untrusted_host_key_fails_and_writes_nothing(
    tmp_path: Path, fleet: SshFleet
) -> None:
    root = tmp_path / "peer"
    root.mkdir()
    peer = await fleet.add_peer("127.0.7.7", root=root)
    impostor_key = (await fleet.add_peer("127.0.7.8")).host_key_line
    (fleet.directory / "known_hosts").write_text(f"[{peer.address}]:{peer.port} {impostor_key}\n")
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet)  # policy known_hosts (the default)
    assert settings.ssh.host_key_policy == "known_hosts"
    connector = Connector(settings.ssh, settings.home)
    ours, _ = await asyncio.to_thread(read_config, config_path)
    target = PeerAddress("gw-b", "beta", peer.address, peer.port, "claw")
    [outcome] = await push_many(Reach(connector), [target], ours, settings)
    assert outcome.result == "failed"
    assert "host key not trusted" in outcome.detail
    assert not any(root.rglob("*"))  # nothing at all on the peer
    assert peer.authenticated == 0
