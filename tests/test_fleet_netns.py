"""A fleet in network namespaces: real multicast discovery, OpenSSH peers, real faults.

Each peer is a namespace with its own address, OpenSSH `sshd` (its own login and home)
and a zeroconf announcer; clawd runs in a namespace of its own and finds them over
mDNS through a bridge. Then: a peer's cable is pulled and put back, one sshd is killed
and comes back with another host key (refused), claw-clan is removed from a peer
(reinstalled by the leader). Tear-down deletes every namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from daemonproc import DaemonProcess
from mdnspeers import MdnsPeers, claw_peer
from netns import Lab, Node
from sshpeers import OpenSshServer, make_client_key, new_host_key, sshd_path

INTERVAL = 0.5
PEERS = ("p1", "p2", "p3")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
]


class Peer:
    def __init__(self, node: Node, server: OpenSshServer, gateway_id: str) -> None:
        self.node = node
        self.server = server
        self.gateway_id = gateway_id

    @property
    def home(self) -> Path:
        return Path(self.server.account.pw_dir)


def _install_claw_clan(
    home: Path, uid: int, gid: int, identity: tuple[str, int] | None = None
) -> None:
    """claw-clan installed; with `identity`, the state.json a real clawd would keep there
    (the gateway id and lead number its peers prove over SSH)."""
    target = home / ".openclaw" / "claw-clan"
    target.mkdir(parents=True, exist_ok=True)
    paths = [home / ".openclaw", target]
    if identity is not None:
        state = target / "state.json"
        state.write_text(json.dumps({"gatewayId": identity[0], "leadNumber": identity[1]}))
        paths.append(state)
    for path in paths:
        os.chown(path, uid, gid)


@contextlib.asynccontextmanager
async def namespace_fleet(
    lab: Lab,
    tmp_path: Path,
    roles: Sequence[str],
    *,
    user: str,
    gateway: str,
    extra_config: Sequence[str] = (),
) -> AsyncIterator[tuple[dict[str, Peer], str, Path]]:
    """One namespace per role: OpenSSH sshd on port 22 under login `user.format(n)`,
    claw-clan installed, announced over mDNS as `gateway.format(role)` on a service type
    of this run's own. Yields (peers by role, service type, client key path)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    client_key = make_client_key(keys)
    service_type = f"_c{secrets.token_hex(4)}._tcp.local."
    made: dict[str, Peer] = {}
    announcers: list[MdnsPeers] = []
    try:
        for n, role in enumerate(roles):
            node = lab.add(role)
            directory = tmp_path / f"sshd-{role}"
            directory.mkdir()
            server = OpenSshServer(
                directory,
                [node.ip],
                [client_key.public_line],
                port=22,
                user=user.format(n + 1),
                prefix=node.prefix,
                extra_config=list(extra_config),
            )
            account = server.account
            shutil.rmtree(Path(account.pw_dir) / ".openclaw", ignore_errors=True)
            Path(account.pw_dir, "install-runs").unlink(missing_ok=True)
            gid = gateway.format(role)
            _install_claw_clan(
                Path(account.pw_dir), account.pw_uid, account.pw_gid, identity=(gid, 10 + n)
            )
            await asyncio.to_thread(server.start)
            made[role] = Peer(node, server, gid)
            announcer = MdnsPeers(
                service_type,
                [claw_peer(gid, lead_number=10 + n, ip=node.ip, ssh_user=server.user)],
                interfaces=[node.ip],
                prefix=node.prefix,
            )
            await announcer.start()
            announcers.append(announcer)
        yield made, service_type, client_key.path
    finally:
        for announcer in announcers:
            await announcer.aclose()
        for peer in made.values():
            await asyncio.to_thread(peer.server.stop)


@pytest.fixture
async def peers(lab: Lab, tmp_path: Path) -> AsyncIterator[tuple[dict[str, Peer], str, Path]]:
    async with namespace_fleet(
        lab,
        tmp_path,
        PEERS,
        user="clawnet{}",
        gateway="net-{}",
        extra_config=["Subsystem sftp internal-sftp"],
    ) as made:
        yield made


def _status(home: Path, gid: str) -> str | None:
    path = home / "peers" / f"{gid}.json"
    try:
        return str(json.loads(path.read_text())["status"])
    except (OSError, ValueError, KeyError):
        return None


async def test_fleet_in_namespaces(
    lab: Lab, peers: tuple[dict[str, Peer], str, Path], tmp_path: Path
) -> None:
    fleet, service_type, client_key = peers
    monitor = lab.add("mon")
    home = tmp_path / "home"
    (home / "scripts").mkdir(parents=True)
    (home / "scripts" / "install.sh").write_text('#!/bin/sh\necho run >> "$HOME/install-runs"\n')
    config = {
        "instance": {"gatewayId": "net-mon", "name": "monitor", "leadNumber": 1, "ip": monitor.ip},
        "ping": {
            "intervalSeconds": INTERVAL,
            "timeoutSeconds": 0.4,
            "offlineAfterMissed": 3,
            "mdnsGraceMisses": 4,
        },
        "ssh": {
            "hostKeyPolicy": "accept-new",
            "clientKeys": [str(client_key)],
            "connectTimeoutSeconds": 1,
            "installCheckEveryRounds": 2,
            "reconnectInitialSeconds": 0.3,
            "reconnectMaxSeconds": 1,
        },
        "discovery": {"enabled": True, "serviceType": service_type, "interfaces": [monitor.ip]},
        "recovery": {"retryInitialSeconds": 2, "retryMaxSeconds": 4},
        "skills": {"syncInterval": "off"},
    }
    (home / "config.json").write_text(json.dumps(config))
    daemon = DaemonProcess(home, prefix=monitor.prefix)
    p1, p2, p3 = (fleet[r] for r in PEERS)
    try:
        await daemon.await_log("event=ready")
        for peer in fleet.values():  # found over multicast, pinged over SSH
            await daemon.wait_incident(peer.gateway_id, "online", 20)
        peer_file = json.loads((home / "peers" / f"{p1.gateway_id}.json").read_text())
        assert peer_file["mdnsBroadcasting"] is True and peer_file["ip"] == p1.node.ip

        # A cable is pulled: offline (its mDNS record is trusted only for a grace period).
        lab.unplug(p1.node)
        await daemon.wait_incident(p1.gateway_id, "offline", 20)
        lab.plug(p1.node)
        await daemon.wait_incident(p1.gateway_id, "recovery", 20)

        # sshd killed, sessions and all: the port refuses, the peer goes down.
        assert lab.kill(p2.node, "sshd") >= 2  # the listener and clawd's session
        await asyncio.to_thread(p2.server.stop)
        await daemon.wait_incident(p2.gateway_id, "offline", 20)
        assert _status(home, p2.gateway_id) == "offline"
        # ... and comes back with another host key: refused, reported, never trusted.
        p2.server.host_key = new_host_key()
        await asyncio.to_thread(p2.server.start)
        await daemon.await_log("event=host_key_differs_from_pin", 15)
        await asyncio.sleep(INTERVAL * 4)
        assert (p2.gateway_id, "recovery") not in daemon.incidents()
        assert _status(home, p2.gateway_id) != "online"

        # claw-clan removed from a peer: the leader reinstalls it.
        shutil.rmtree(p3.home / ".openclaw")
        await daemon.wait_incident(p3.gateway_id, "reinstall", 30)
        assert (p3.home / "install-runs").read_text() == "run\n"
        assert (p3.home / ".openclaw" / "claw-clan" / "scripts" / "install.sh").exists()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    assert "Traceback" not in daemon.log
    assert daemon.incidents().count((p3.gateway_id, "reinstall")) == 1
