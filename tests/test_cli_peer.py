"""`clawd peer list | trust | forget` (issue 14), as an operator runs them: the command in
a subprocess, against the real daemon in the test's loop and real asyncssh peers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from faulthelpers import three_peers
from inprocess import InProcessDaemons, peers_config, write_config
from sshpeers import SshFleet, SshPeer

from clawd.core.model import Instance, PeerState, PeerStatus
from clawd.core.trust import Trust
from clawd.keep.store.json_store import JsonStore
from clawd.sources.pins import PINS_FILE_NAME, Pin, key_text, read_pins, write_pins

CLI_SECONDS = 30.0
Fleet = tuple[SshFleet, dict[str, SshPeer]]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with three_peers(tmp_path, "gw-p", 60) as fleet:
        yield fleet


async def clawd(config: Path, *args: str) -> tuple[int, str, str]:
    """`clawd ARGS --config CONFIG` with no stdin (a script, a cron job)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clawd.cli.main",
        *args,
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    async with asyncio.timeout(CLI_SECONDS):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def found_config(fleet: Fleet, static: list[str]) -> dict[str, Any]:
    """gw-a's config with only `static` of the peers in config.json."""
    ssh_fleet, peers = fleet
    config = peers_config(ssh_fleet, peers)
    config["peers"] = [p for p in config["peers"] if p["gatewayId"] in static]
    return config


async def seed_found_peer(home: Path, gid: str, peer: SshPeer) -> None:
    """A peer an earlier run found by mDNS: in peers/ and fleet.json, not in config.json."""
    await asyncio.to_thread((home / "peers").mkdir, parents=True, exist_ok=True)
    store = JsonStore(home)
    inst = Instance(
        gateway_id=gid, name=f"found-{gid}", ip=peer.address, ssh_port=peer.port, ssh_user="claw"
    )
    await store.write_peer(inst, PeerState(gateway_id=gid))
    await store.write_fleet([inst], None)


def pin_for(gid: str, peer: SshPeer, trust: Trust) -> Pin:
    key = peer.host_key
    return Pin(gid, key_text(key), key.get_fingerprint(), trust, peer.address, peer.port, "")


async def test_forget_through_the_daemon_drops_files_and_pings(
    inprocess_daemons: InProcessDaemons, fleet: Fleet, tmp_path: Path
) -> None:
    _, peers = fleet
    home = tmp_path / "daemons" / "home"
    found = peers["gw-p2"]
    await seed_found_peer(home, "gw-p2", found)
    pins = {g: pin_for(g, p, Trust.FIRST_USE) for g, p in peers.items()}
    await asyncio.to_thread(write_pins, home / PINS_FILE_NAME, pins)
    daemon = await inprocess_daemons.start(found_config(fleet, ["gw-p0", "gw-p1"]))
    config = home / "config.json"

    def online(gid: str) -> bool:
        record = daemon.view.peers.get(gid)
        return record is not None and record.state.status is PeerStatus.ONLINE

    await until(lambda: all(online(g) for g in peers), 15, "the three peers online")
    assert found.connections, "the daemon pings the found peer over a connection"

    code, out, err = await clawd(config, "peer", "forget", "gw-p2")
    assert code == 0, err
    assert "forgot gw-p2" in out and "History" in out, out
    assert "gw-p2" not in daemon.view.peers
    assert not (home / "peers" / "gw-p2.json").exists()
    fleet_doc = json.loads(await asyncio.to_thread((home / "fleet.json").read_text))
    assert "gw-p2" not in {i["gatewayId"] for i in fleet_doc["instances"]}
    left = await asyncio.to_thread(read_pins, home / PINS_FILE_NAME)
    assert set(left) == {"gw-p0", "gw-p1"}, "only the forgotten peer's pin goes"

    # Pings stop: the pinger closes its link and opens no new one (interval 0.3 s).
    await until(lambda: not found.connections, 5, "the link to the forgotten peer closed")
    logins = found.authenticated
    await asyncio.sleep(1.5)
    assert found.authenticated == logins and not found.connections
    assert not (home / "peers" / "gw-p2.json").exists(), "no held-back state wrote it back"
    assert online("gw-p0") and online("gw-p1")

    # A static peer is config.json's to remove; an unknown one is a one-line error.
    code, out, err = await clawd(config, "peer", "forget", "gw-p0")
    assert code == 2 and "remove it from config.json" in err, (code, out, err)
    assert "gw-p0" in daemon.view.peers
    code, out, err = await clawd(config, "peer", "forget", "gw-nobody")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "gw-nobody" in err, err


async def test_forget_without_a_daemon_edits_the_files(fleet: Fleet, tmp_path: Path) -> None:
    _, peers = fleet
    home = tmp_path / "home"
    await seed_found_peer(home, "gw-p2", peers["gw-p2"])
    pins = {g: pin_for(g, p, Trust.OPERATOR) for g, p in peers.items()}
    await asyncio.to_thread(write_pins, home / PINS_FILE_NAME, pins)
    config = await asyncio.to_thread(write_config, home, found_config(fleet, ["gw-p0"]))

    code, out, err = await clawd(config, "peer", "forget", "gw-p2")
    assert code == 0, err
    assert "peers/gw-p2.json" in out and "fleet.json" in out, out
    assert not (home / "peers" / "gw-p2.json").exists()
    fleet_doc = json.loads(await asyncio.to_thread((home / "fleet.json").read_text))
    assert fleet_doc["instances"] == []
    left = await asyncio.to_thread(read_pins, home / PINS_FILE_NAME)
    assert set(left) == {"gw-p0", "gw-p1"}


async def test_trust_pins_the_servers_key_as_operator(fleet: Fleet, tmp_path: Path) -> None:
    _, peers = fleet
    home = tmp_path / "home"
    config = await asyncio.to_thread(write_config, home, found_config(fleet, ["gw-p0"]))
    peer = peers["gw-p0"]
    other = pin_for("gw-p1", peers["gw-p1"], Trust.FIRST_USE)
    await asyncio.to_thread(write_pins, home / PINS_FILE_NAME, {"gw-p1": other})

    # No TTY and no --yes: the key is shown, nothing is pinned.
    code, out, err = await clawd(config, "peer", "trust", "gw-p0")
    assert code == 2, (code, out, err)
    assert peer.host_key.get_fingerprint() in out, out
    assert "--yes" in err and len(err.strip().splitlines()) == 1, err
    pins = await asyncio.to_thread(read_pins, home / PINS_FILE_NAME)
    assert set(pins) == {"gw-p1"}

    code, out, err = await clawd(config, "peer", "trust", "gw-p0", "--yes")
    assert code == 0, err
    assert f"{peer.address}:{peer.port}" in out and "ssh-ed25519" in out, out
    pins = await asyncio.to_thread(read_pins, home / PINS_FILE_NAME)
    assert pins["gw-p1"] == other, "the other pins are kept"
    pin = pins["gw-p0"]
    assert pin.trust is Trust.OPERATOR
    assert pin.fingerprint == peer.host_key.get_fingerprint()
    assert pin.key == key_text(peer.host_key)
    assert (pin.host, pin.port) == (peer.address, peer.port)

    # Re-keyed (or an impostor at its address): shown as different, replaced only on yes.
    old = pin.fingerprint
    new_key = await peer.change_host_key()
    code, out, err = await clawd(config, "peer", "trust", "gw-p0")
    assert code == 2 and "DIFFERS" in out and old in out, (code, out, err)
    assert new_key.get_fingerprint() in out
    pins = await asyncio.to_thread(read_pins, home / PINS_FILE_NAME)
    assert pins["gw-p0"].fingerprint == old
    code, out, err = await clawd(config, "peer", "trust", "gw-p0", "--yes")
    assert code == 0 and "DIFFERS" in out, (code, out, err)
    pins = await asyncio.to_thread(read_pins, home / PINS_FILE_NAME)
    assert pins["gw-p0"].fingerprint == new_key.get_fingerprint() != old
    assert pins["gw-p0"].trust is Trust.OPERATOR

    code, out, err = await clawd(config, "peer", "trust", "gw-nobody", "--yes")
    assert code == 2 and "gw-nobody" in err and "--host" in err, (code, out, err)


async def test_list_live_and_from_files(
    inprocess_daemons: InProcessDaemons, fleet: Fleet, tmp_path: Path
) -> None:
    _, peers = fleet
    home = tmp_path / "daemons" / "home"
    await seed_found_peer(home, "gw-p2", peers["gw-p2"])
    pin = pin_for("gw-p0", peers["gw-p0"], Trust.OPERATOR)
    await asyncio.to_thread(write_pins, home / PINS_FILE_NAME, {"gw-p0": pin})
    config_doc = found_config(fleet, ["gw-p0", "gw-p1"])
    config = await asyncio.to_thread(write_config, home, config_doc)

    # No daemon: the files, said to be not live.
    code, out, err = await clawd(config, "peer", "list")
    assert code == 0, err
    assert out.startswith("not live"), out
    code, out, err = await clawd(config, "peer", "list", "--json")
    doc = json.loads(out)
    assert doc["live"] is False
    assert {r["gatewayId"] for r in doc["peers"]} == set(peers)

    daemon = await inprocess_daemons.start(config_doc)
    await until(lambda: len(daemon.view.peers) == 3, 10, "three peers in the view")
    code, out, err = await clawd(config, "peer", "list", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["live"] is True
    rows = {r["gatewayId"]: r for r in doc["peers"]}
    assert set(rows) == set(peers)
    assert rows["gw-p0"]["source"] == "static" and rows["gw-p2"]["source"] == "mdns"
    assert rows["gw-p0"]["fingerprint"] == peers["gw-p0"].host_key.get_fingerprint()
    assert rows["gw-p1"]["fingerprint"] is None
    p2 = peers["gw-p2"]
    assert rows["gw-p2"]["address"] == f"{p2.address}:{p2.port}"
    for gid, row in rows.items():
        record = daemon.view.peers[gid]
        assert row["verified"] is record.verified and row["trust"] == record.trust.value, row

    code, out, err = await clawd(config, "peer", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["GATEWAY", "NAME", "ADDRESS", "SOURCE"], lines
    by_gid = {line.split()[0]: line for line in lines[1:]}
    assert set(by_gid) == set(peers), out
    assert pin.fingerprint in by_gid["gw-p0"] and " static " in by_gid["gw-p0"]
    assert " mdns " in by_gid["gw-p2"]


async def clawd_on_tty(config: Path, answer: str, *args: str) -> tuple[int, str]:
    """`clawd ARGS` with a terminal on stdin, typing `answer` at the prompt."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clawd.cli.main",
            *args,
            "--config",
            str(config),
            stdin=slave,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        await asyncio.to_thread(os.write, master, answer.encode() + b"\n")
        async with asyncio.timeout(CLI_SECONDS):
            out, _ = await proc.communicate()
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_trust_asks_on_a_tty(fleet: Fleet, tmp_path: Path) -> None:
    _, peers = fleet
    home = tmp_path / "home"
    config = await asyncio.to_thread(write_config, home, found_config(fleet, ["gw-p1"]))
    code, out = await clawd_on_tty(config, "n", "peer", "trust", "gw-p1")
    assert code == 1 and "Trust this key for gw-p1? [y/N]" in out, (code, out)
    assert not (home / PINS_FILE_NAME).exists()
    code, out = await clawd_on_tty(config, "y", "peer", "trust", "gw-p1")
    assert code == 0, out
    pins = await asyncio.to_thread(read_pins, home / PINS_FILE_NAME)
    assert pins["gw-p1"].fingerprint == peers["gw-p1"].host_key.get_fingerprint()
