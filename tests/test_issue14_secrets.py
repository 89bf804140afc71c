"""Issue 14 case 1: secrets go only where the operator trusts the host key.

A peer trusted on first use (or not verified) receives config.json without `postgres`;
a known_hosts or operator-trusted one receives it whole; a loopback postgres.host is never
sent. Every push path: distribution, reinstall, `clawd config push`. Real asyncssh peers
with SFTP; the peer's file is read on the peer's side.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import structlog
from fleetops_helpers import document, machine, make_home
from sshpeers import SshFleet

from clawd.act.fleetops.distribution import ConfigDistributor, PushOutcome, push_many
from clawd.act.fleetops.peer_config import config_for_peer, connection_trust, is_loopback_host
from clawd.act.fleetops.recovery import reinstall
from clawd.act.fleetops.remote import PeerAddress, Reach
from clawd.config.load import settings_from_data
from clawd.core.model import Instance, PeerState, PeerStatus
from clawd.core.trust import Trust
from clawd.decide.view import FleetView, PeerRecord
from clawd.sources.pins import Pin, key_text
from clawd.sources.ssh_client import Connector

PASSWORD = "pg-secret-14"
POSTGRES = {"host": "db.example", "port": 5432, "password": PASSWORD}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


def _peer_config(root: Path) -> dict[str, Any]:
    data = json.loads((root / ".openclaw" / "claw-clan" / "config.json").read_text())
    assert isinstance(data, dict)
    return data


def test_secrets_only_for_known_hosts_and_operator_trust() -> None:
    ours = {"backend": "postgres", "postgres": POSTGRES, "ping": {"intervalSeconds": 5}}
    for trust in (Trust.NONE, Trust.FIRST_USE):
        shaped = config_for_peer(ours, None, trust)
        assert PASSWORD.encode() not in shaped.data
        assert json.loads(shaped.data) == {"backend": "postgres", "ping": {"intervalSeconds": 5}}
        assert [w.key for w in shaped.withheld] == ["postgres"]
    assert "trusted on first use; run `clawd peer trust gw-b`" in config_for_peer(
        ours, None, Trust.FIRST_USE
    ).note("gw-b")
    for trust in (Trust.KNOWN_HOSTS, Trust.OPERATOR):
        shaped = config_for_peer(ours, None, trust)
        assert json.loads(shaped.data)["postgres"] == POSTGRES and shaped.withheld == ()
    # What is withheld, the peer keeps of its own (a peer set up by hand is not broken),
    # and a second push of the same gives the same bytes ("unchanged", not a push loop).
    theirs = json.dumps({"postgres": {"host": "their-db"}, "backend": "json"}).encode()
    once = config_for_peer(ours, theirs, Trust.FIRST_USE)
    assert json.loads(once.data)["postgres"] == {"host": "their-db"}
    assert config_for_peer(ours, once.data, Trust.FIRST_USE).data == once.data


def test_loopback_postgres_host_is_never_sent_and_warned_once() -> None:
    for host in ("localhost", "127.0.0.1", "127.3.2.1", "::1", "[::1]", "/run/postgresql", ""):
        assert is_loopback_host(host), host
    for host in ("db.example", "10.0.0.5", "192.168.1.2", "fe80::1", "localhost-db"):
        assert not is_loopback_host(host), host
    ours = {"postgres": {"host": "127.0.0.14", "port": 5433, "password": PASSWORD}}
    with structlog.testing.capture_logs() as logs:
        shaped = [config_for_peer(ours, None, Trust.KNOWN_HOSTS) for _ in range(5)]
        theirs = json.dumps({"postgres": {"host": "10.1.1.1"}}).encode()
        kept = config_for_peer(ours, theirs, Trust.OPERATOR)
    assert json.loads(shaped[0].data) == {"postgres": {"port": 5433, "password": PASSWORD}}
    assert [w.key for w in shaped[0].withheld] == ["postgres.host"]
    # Key order kept; the peer's own host in its place.
    assert list(json.loads(kept.data)["postgres"]) == ["host", "port", "password"]
    assert json.loads(kept.data)["postgres"]["host"] == "10.1.1.1"
    warned = [e for e in logs if e["event"] == "config_loopback_host_withheld"]
    assert len(warned) == 1 and warned[0]["host"] == "127.0.0.14"
    assert PASSWORD not in repr(logs)


def test_connection_trust_without_a_daemon() -> None:
    base = {"instance": {"gatewayId": "gw-a", "name": "alpha"}}
    known = settings_from_data(base, {})
    tofu = settings_from_data({**base, "ssh": {"hostKeyPolicy": "accept-new"}}, {})
    key = key_text(asyncssh.generate_private_key("ssh-ed25519"))
    pin = Pin("gw-op", key, "SHA256:x", Trust.OPERATOR, "127.0.0.9", 22, "")
    assert connection_trust(known, {}, "gw-b") is Trust.KNOWN_HOSTS
    assert connection_trust(tofu, {}, "gw-b") is Trust.FIRST_USE
    assert connection_trust(tofu, {"gw-op": pin}, "gw-op") is Trust.OPERATOR


async def test_first_use_peer_gets_config_without_postgres_known_hosts_peer_whole(
    tmp_path: Path, fleet: SshFleet
) -> None:
    roots = {gid: tmp_path / gid for gid in ("gw-tofu", "gw-known")}
    peers = {
        gid: await machine(fleet, root, f"127.0.14.{n + 2}", installed=True)
        for n, (gid, root) in enumerate(roots.items())
    }
    home = tmp_path / "home"
    home.mkdir()
    settings, _ = make_home(home, fleet, postgres=POSTGRES)
    ours = document(home / "config.json").data
    trust = {"gw-tofu": Trust.FIRST_USE, "gw-known": Trust.KNOWN_HOSTS}
    targets = [
        PeerAddress(gid, gid, p.address, p.port, "claw", trust[gid]) for gid, p in peers.items()
    ]
    connector = Connector(settings.ssh, home)

    first = {o.gateway_id: o for o in await push_many(Reach(connector), targets, ours, settings)}

    assert {g: o.result for g, o in first.items()} == {"gw-tofu": "pushed", "gw-known": "pushed"}
    assert "postgres" not in _peer_config(roots["gw-tofu"])
    assert PASSWORD not in (roots["gw-tofu"] / ".openclaw/claw-clan/config.json").read_text()
    assert _peer_config(roots["gw-tofu"])["ssh"] == ours["ssh"]  # the rest is there
    assert _peer_config(roots["gw-known"])["postgres"] == POSTGRES
    assert first["gw-tofu"].withheld == ("postgres",) and first["gw-known"].withheld == ()
    assert "run `clawd peer trust gw-tofu`" in first["gw-tofu"].detail
    again = await push_many(Reach(connector), targets, ours, settings)
    assert [o.result for o in again] == ["unchanged", "unchanged"]  # no push loop
    # Through the control socket and back (`clawd config push` with a daemon).
    assert PushOutcome.from_dict(first["gw-tofu"].to_dict()) == first["gw-tofu"]


async def test_case1_reinstall_of_a_first_use_peer_copies_no_password(
    tmp_path: Path, fleet: SshFleet
) -> None:
    """Case 1: the rogue `evil` (accept-new) had config.json with the password 0.9 s after
    announcing, by reinstall. Now its copy has no postgres section."""
    root = tmp_path / "evil"
    rogue = await machine(fleet, root, "127.0.14.9")
    home = tmp_path / "home"
    home.mkdir()
    settings, _ = make_home(home, fleet, postgres=POSTGRES)
    ours = document(home / "config.json").data
    target = PeerAddress("evil", "evil", rogue.address, rogue.port, "claw", Trust.FIRST_USE)

    outcome = await reinstall(
        Reach(Connector(settings.ssh, home)), target, settings, ours, "claw-clan not installed"
    )

    assert outcome.ok, outcome.error
    text = (root / ".openclaw" / "claw-clan" / "config.json").read_text()
    assert PASSWORD not in text and "postgres" not in json.loads(text)
    assert outcome.details(target)["withheld"] == ["postgres"]


async def test_distributor_pushes_again_when_a_peer_becomes_trusted(
    tmp_path: Path, fleet: SshFleet
) -> None:
    root = tmp_path / "peer"
    peer = await machine(fleet, root, "127.0.14.12", installed=True)
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet, postgres=POSTGRES)
    distributor = ConfigDistributor(settings, document(config_path), Connector(settings.ssh, home))
    me = Instance("gw-a", "alpha", lead_number=1)

    def view(trust: Trust) -> FleetView:
        state = PeerState("gw-b", status=PeerStatus.ONLINE, claw_clan_installed=True)
        inst = Instance("gw-b", "beta", lead_number=9, ip=peer.address, ssh_port=peer.port)
        return FleetView(me, {"gw-b": PeerRecord(inst, state, verified=True, trust=trust)}, "gw-a")

    for trust, pushes in ((Trust.FIRST_USE, 1), (Trust.FIRST_USE, 1), (Trust.OPERATOR, 2)):
        distributor.update_view(view(trust))
        async with asyncio.timeout(15):
            await distributor._cycle()
        assert distributor.pushes == pushes
        assert ("postgres" in _peer_config(root)) is (trust is Trust.OPERATOR)


async def test_cli_push_under_accept_new_says_per_peer_what_was_withheld(
    tmp_path: Path, fleet: SshFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    from clawd.cli.main import main
    from clawd.keep.store.json_store import JsonStore
    from clawd.sources.pins import PINS_FILE_NAME, write_pins

    roots = {gid: tmp_path / gid for gid in ("evil", "gw-op")}
    peers = {}
    for n, (gid, root) in enumerate(roots.items()):
        (root / ".openclaw" / "claw-clan").mkdir(parents=True)
        peers[gid] = await fleet.add_peer(f"127.0.14.{n + 20}", root=root)
    home = tmp_path / "home"
    home.mkdir()
    (home / "known_hosts").touch()
    ssh = {"hostKeyPolicy": "accept-new", "knownHosts": str(home / "known_hosts")}
    _, config_path = make_home(home, fleet, postgres=POSTGRES, ssh=ssh)
    op = peers["gw-op"]
    pin = Pin("gw-op", op.host_key_line, "SHA256:x", Trust.OPERATOR, op.address, op.port, "")
    await asyncio.to_thread(write_pins, home / PINS_FILE_NAME, {"gw-op": pin})
    store = JsonStore(home)
    await store.load()
    for gid, p in peers.items():
        inst = Instance(gid, gid, ip=p.address, ssh_port=p.port, ssh_user="claw")
        await store.write_peer(inst, PeerState(gid))

    code = await asyncio.to_thread(main, ["config", "push", "--config", str(config_path)])

    out, err = capsys.readouterr()
    assert code == 0, out + err
    [evil_line] = [line for line in out.splitlines() if line.startswith("evil")]
    assert "pushed" in evil_line
    assert "without postgres: host key trusted on first use; run `clawd peer trust evil`" in (
        evil_line
    )
    [op_line] = [line for line in out.splitlines() if line.startswith("gw-op")]
    assert "without" not in op_line
    assert "postgres" not in _peer_config(roots["evil"])
    assert _peer_config(roots["gw-op"])["postgres"]["password"] == PASSWORD
