"""Config push and reinstall against real SSH servers on loopback (asyncssh; OpenSSH once)."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fleetops_helpers import document, machine, make_home, write_known_hosts
from sshpeers import OpenSshServer, SshFleet, sshd_path

from clawd.act.fleetops.distribution import push_many, render_outcomes
from clawd.act.fleetops.payload import read_config
from clawd.act.fleetops.recovery import Recoverer, reinstall
from clawd.act.fleetops.remote import PeerAddress, Reach
from clawd.core.model import Instance, PeerState, PeerStatus
from clawd.core.trust import Trust
from clawd.decide.view import FleetView, PeerRecord
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.factory import build_repository
from clawd.sources.ssh_client import Connector


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


def _address(gid: str, host: str, port: int) -> PeerAddress:
    return PeerAddress(gid, f"name-{gid}", host, port, "claw")


def _incidents(home: Path) -> list[dict[str, object]]:
    path = home / "incidents.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_push_reports_each_peer_and_keeps_their_identity(
    tmp_path: Path, fleet: SshFleet
) -> None:
    roots = {gid: tmp_path / gid for gid in ("gw-b", "gw-c", "gw-d")}
    peers = {}
    for n, (gid, root) in enumerate(roots.items()):
        (root / ".openclaw" / "claw-clan").mkdir(parents=True)  # claw-clan is installed
        peers[gid] = await fleet.add_peer(f"127.0.4.{n + 2}", root=root)
    write_known_hosts(fleet)
    # gw-b already has a config of its own: its identity must survive the push.
    b_conf = roots["gw-b"] / ".openclaw" / "claw-clan" / "config.json"
    b_conf.write_text(json.dumps({"backend": "json", "instance": {"gatewayId": "gw-b"}}))
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet, backend="json")
    await peers["gw-d"].stop()  # one peer is down
    connector = Connector(settings.ssh, settings.home)
    ours, _ = await asyncio.to_thread(read_config, config_path)
    targets = [_address(gid, p.address, p.port) for gid, p in peers.items()]

    first = await push_many(Reach(connector), targets, ours, settings)

    by_gid = {o.gateway_id: o for o in first}
    assert [by_gid[g].result for g in ("gw-b", "gw-c", "gw-d")] == ["pushed", "pushed", "failed"]
    assert "refused" in by_gid["gw-d"].detail
    table = render_outcomes(first)
    assert "name-gw-d" in table and "2 pushed, 0 unchanged, 1 failed" in table
    for gid in ("gw-b", "gw-c"):
        path = roots[gid] / ".openclaw" / "claw-clan" / "config.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        pushed = json.loads(path.read_text())
        assert pushed["ssh"] == ours["ssh"]
        assert pushed.get("instance") == ({"gatewayId": "gw-b"} if gid == "gw-b" else None)
        assert not list(path.parent.glob("*.tmp-*"))  # temp file renamed, not left

    # The peer comes back; a second round delivers to it and leaves the others alone.
    await peers["gw-d"].start()
    second = {
        o.gateway_id: o.result for o in await push_many(Reach(connector), targets, ours, settings)
    }
    assert second == {"gw-b": "unchanged", "gw-c": "unchanged", "gw-d": "pushed"}


def _view_with(me: Instance, gid: str, host: str, port: int, installed: bool) -> FleetView:
    state = PeerState(
        gid, status=PeerStatus.ONLINE, ssh_connectivity=True, claw_clan_installed=installed
    )
    peer = Instance(gid, f"name-{gid}", lead_number=9, ip=host, ssh_port=port, ssh_user="claw")
    return FleetView(
        me, {gid: PeerRecord(peer, state, verified=True, trust=Trust.KNOWN_HOSTS)}, me.gateway_id
    )


async def test_leader_reinstalls_a_peer_once_and_records_it(
    tmp_path: Path, fleet: SshFleet
) -> None:
    root = tmp_path / "peer"
    peer = await machine(fleet, root, "127.0.4.10")
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet)
    repo = build_repository(settings)
    await repo.open()
    rechecked: list[str] = []
    connector = Connector(settings.ssh, home)
    recoverer = Recoverer(
        settings, document(config_path), connector, IncidentRecorder(repo), rechecked.append
    )
    me = Instance("gw-a", "alpha", lead_number=1)
    view = _view_with(me, "gw-t", peer.address, peer.port, installed=False)
    ready = asyncio.Event()
    recoverer.update_view(view)
    task = asyncio.create_task(recoverer.run(ready))
    try:
        async with asyncio.timeout(15):
            while recoverer.reinstalls == 0:
                await asyncio.sleep(0.05)
        # The view still says "not installed" until the pinger's re-check: no second run.
        recoverer.update_view(view)
        await asyncio.sleep(0.2)
    finally:
        recoverer.stop()
        await task
        await repo.flush()
        await repo.close()
    installed = root / ".openclaw" / "claw-clan"
    assert (installed / "scripts" / "install.sh").read_text().startswith("#!/bin/sh")
    assert stat.S_IMODE((installed / "scripts" / "install.sh").stat().st_mode) == 0o700
    assert (installed / "scripts" / "lib" / "common.sh").read_text() == "CLAW=1\n"
    assert stat.S_IMODE((installed / "config.json").stat().st_mode) == 0o600
    assert (root / "install-runs").read_text().count("run") == 1
    assert rechecked == ["gw-t"]
    [incident] = [i for i in _incidents(home) if i["eventType"] == "reinstall"]
    details = incident["details"]
    assert isinstance(details, dict)
    assert incident["gatewayId"] == "gw-t" and details["outcome"] == "ok"
    assert details["reason"] == "claw-clan not installed"
    assert sorted(details["files"]) == [
        "config.json",
        "scripts/install.sh",
        "scripts/lib/common.sh",
    ]
    assert details["duration_s"] > 0


async def test_failed_install_backs_off_and_records_one_incident_per_error(
    tmp_path: Path, fleet: SshFleet
) -> None:
    root = tmp_path / "peer"
    peer = await machine(fleet, root, "127.0.4.11")
    home = tmp_path / "home"
    home.mkdir()
    failing = '#!/bin/sh\necho run >> "$HOME/install-runs"\necho "disk on fire" >&2\nexit 3\n'
    settings, config_path = make_home(
        home,
        fleet,
        install_script=failing,
        # The payload makes the directory; the check wants the installer's own mark.
        ssh={"installCheckCommand": "test -f ~/.openclaw/claw-clan/installed"},
        recovery={"retryInitialSeconds": 0.4, "retryMaxSeconds": 0.8},
    )
    repo = build_repository(settings)
    await repo.open()
    recoverer = Recoverer(
        settings,
        document(config_path),
        Connector(settings.ssh, home),
        IncidentRecorder(repo),
        print,
    )
    recoverer.update_view(
        _view_with(Instance("gw-a", "a", lead_number=1), "gw-t", peer.address, peer.port, False)
    )
    task = asyncio.create_task(recoverer.run(asyncio.Event()))
    try:
        async with asyncio.timeout(20):
            while (root / "install-runs").exists() is False or (
                (root / "install-runs").read_text().count("run") < 3
            ):
                await asyncio.sleep(0.05)
    finally:
        recoverer.stop()
        await task
        await repo.flush()
        await repo.close()
    runs = (root / "install-runs").read_text().count("run")
    # 0.4 s, then 0.8 s, 0.8 s ...: a handful of tries, not a tight loop.
    assert 3 <= runs <= 5
    failures = [i for i in _incidents(home) if i["eventType"] == "reinstall"]
    assert len(failures) == 1  # the same error again is not a new incident
    details = failures[0]["details"]
    assert isinstance(details, dict)
    assert details["outcome"] == "failed"
    assert "exit 3" in str(details["error"]) and "disk on fire" in str(details["error"])


async def test_reinstall_skips_a_peer_that_turns_out_installed(
    tmp_path: Path, fleet: SshFleet
) -> None:
    root = tmp_path / "peer"
    peer = await machine(fleet, root, "127.0.4.12", installed=True)
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet)
    outcome = await reinstall(
        Reach(Connector(settings.ssh, home)),
        _address("gw-t", peer.address, peer.port),
        settings,
        document(config_path).data,
        "claw-clan not installed",
    )
    assert outcome.ok and outcome.already_installed and outcome.files == []
    assert not (root / "install-runs").exists()


@pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed")
async def test_push_and_reinstall_through_openssh(tmp_path: Path, fleet: SshFleet) -> None:
    # A real sshd with its own sftp-server and a real login shell for the commands.
    server = OpenSshServer(
        tmp_path / "sshd",
        ["127.0.4.20"],
        [fleet.client_key.public_line],
        extra_config=["Subsystem sftp internal-sftp"],
    )
    (tmp_path / "sshd").mkdir()
    await asyncio.to_thread(server.start)
    remote_home = f".clawd-test-{secrets.token_hex(4)}/claw-clan"
    user_home = Path(server.account.pw_dir)
    try:
        (fleet.directory / "known_hosts").write_text(server.known_hosts_text())
        home = tmp_path / "home"
        home.mkdir()
        settings, config_path = make_home(
            home,
            fleet,
            install_script='#!/bin/sh\necho run >> "$HOME/' + remote_home + '/install-runs"\n',
            ssh={"installCheckCommand": f"test -f ~/{remote_home}/install-runs"},
            recovery={
                "remoteHome": remote_home,
                "installCommand": f"sh ~/{remote_home}/scripts/install.sh",
            },
        )
        peer = PeerAddress("gw-o", "openssh", "127.0.4.20", server.port, server.user)
        connector = Connector(settings.ssh, home)
        outcome = await reinstall(
            Reach(connector), peer, settings, document(config_path).data, "claw-clan not installed"
        )
        assert outcome.ok and not outcome.already_installed, outcome.error
        installed = user_home / remote_home
        assert (installed / "install-runs").read_text() == "run\n"
        config = installed / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert config.stat().st_uid == server.account.pw_uid
        ours, _ = await asyncio.to_thread(read_config, config_path)
        [pushed] = await push_many(Reach(connector), [peer], ours, settings)
        assert pushed.result == "unchanged"  # the reinstall already delivered this config
        ours["ping"] = {"intervalSeconds": 30}
        config_path.write_text(json.dumps(ours))
        [pushed] = await push_many(Reach(connector), [peer], ours, settings)
        assert pushed.result == "pushed"
        assert json.loads(config.read_text())["ping"] == {"intervalSeconds": 30}
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(user_home / remote_home.split("/")[0], ignore_errors=True)


async def test_older_version_is_reinstalled_even_though_installed(
    tmp_path: Path, fleet: SshFleet
) -> None:
    root = tmp_path / "peer"
    peer = await machine(fleet, root, "127.0.4.13", installed=True)
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet)
    outcome = await reinstall(
        Reach(Connector(settings.ssh, home)),
        _address("gw-t", peer.address, peer.port),
        settings,
        document(config_path).data,
        "version 0.0.9 older than 0.1.0",
    )
    assert outcome.ok and not outcome.already_installed, outcome.error
    assert (root / "install-runs").read_text() == "run\n"


async def test_recovery_disabled_leaves_peers_alone(tmp_path: Path, fleet: SshFleet) -> None:
    root = tmp_path / "peer"
    peer = await machine(fleet, root, "127.0.4.14")
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet, recovery={"enabled": False})
    repo = build_repository(settings)
    await repo.open()
    recoverer = Recoverer(
        settings,
        document(config_path),
        Connector(settings.ssh, home),
        IncidentRecorder(repo),
        print,
    )
    me = Instance("gw-a", "alpha", lead_number=1)
    recoverer.update_view(_view_with(me, "gw-t", peer.address, peer.port, installed=False))
    task = asyncio.create_task(recoverer.run(asyncio.Event()))
    await asyncio.sleep(1.0)
    assert not (root / "install-runs").exists()
    assert not (root / ".openclaw").exists()
    # Switched on by a reload: it acts at once.
    on, _ = make_home(tmp_path / "home2", fleet)
    await recoverer.reconfigure(on, frozenset({"recovery"}))
    try:
        async with asyncio.timeout(10):
            while recoverer.reinstalls == 0:
                await asyncio.sleep(0.05)
    finally:
        recoverer.stop()
        await task
        await repo.close()
    assert (root / "install-runs").read_text() == "run\n"


async def test_push_and_reinstall_borrow_an_open_connection(
    tmp_path: Path, fleet: SshFleet
) -> None:
    # The daemon lends the pinger's connection: no new handshake, and it stays open.
    root = tmp_path / "peer"
    peer = await machine(fleet, root, "127.0.4.15")
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet)
    connector = Connector(settings.ssh, home)
    lent = await connector.open_connection(peer.address, peer.port, "claw")
    address = _address("gw-t", peer.address, peer.port)
    try:
        outcome = await reinstall(
            Reach(connector, {"gw-t": lent}.get),
            address,
            settings,
            document(config_path).data,
            "claw-clan not installed",
        )
        assert outcome.ok, outcome.error
        ours, _ = await asyncio.to_thread(read_config, config_path)
        [pushed] = await push_many(Reach(connector, {"gw-t": lent}.get), [address], ours, settings)
        assert pushed.result == "unchanged"
        assert peer.authenticated == 1  # only the lent connection ever logged in
        result = await lent.run("true", check=False)
        assert result.exit_status == 0  # still open and usable
    finally:
        lent.close()
        await lent.wait_closed()
    assert (root / "install-runs").read_text() == "run\n"


async def test_config_push_without_a_daemon_reads_peers_from_the_store(
    tmp_path: Path, fleet: SshFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    from clawd.cli.main import main
    from clawd.keep.store.json_store import JsonStore

    root = tmp_path / "peer"
    (root / ".openclaw" / "claw-clan").mkdir(parents=True)  # claw-clan is installed
    up = await fleet.add_peer("127.0.4.16", root=root)
    down = await fleet.add_peer("127.0.4.17", root=tmp_path)
    write_known_hosts(fleet)
    await down.stop()
    home = tmp_path / "home"
    home.mkdir()
    _, config_path = make_home(home, fleet)
    store = JsonStore(home)
    await store.load()  # creates the layout, as the daemon does
    for gid, p in (("gw-up", up), ("gw-down", down)):
        inst = Instance(gid, f"name-{gid}", ip=p.address, ssh_port=p.port, ssh_user="claw")
        await store.write_peer(inst, PeerState(gid))

    code = await asyncio.to_thread(main, ["config", "push", "--config", str(config_path)])

    out, err = capsys.readouterr()
    assert code == 1
    assert "1 pushed, 0 unchanged, 1 failed" in out and "name-gw-down" in out
    assert "start the daemon to retry" in err
    assert (root / ".openclaw" / "claw-clan" / "config.json").exists()
