"""Issue 14 against a real `clawd run`: an mDNS announcement is a hint, never an identity
or a leader. Rogue announcers run in another process over real zeroconf on loopback; the
legitimate peers are asyncssh servers that hold their identity in their own state.json.

Case 2 (usurper never leads), case 3 (a known id announced elsewhere moves nothing), case 7
(a flood of unverified announcements is bounded and forgotten), and the legitimate paths: a
verified announcement becomes a peer, a peer whose address changed (DHCP) keeps its identity
by proving its pinned key.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess
from mdnspeers import MdnsPeers, claw_peer
from sshpeers import SshFleet, SshPeer

from clawd.serve.control import request

INTERVAL = 0.5
TIMEOUT = 0.4
SERVICE = f"_t{secrets.token_hex(3)}._tcp.local."
NET = f"127.0.{secrets.randbelow(40) + 200}"  # this module's own third octet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def ssh_fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as fleet:
        yield fleet


def write_config(
    home: Path,
    fleet: SshFleet,
    static: dict[str, SshPeer],
    *,
    policy: str = "known_hosts",
    max_unverified: int | None = None,
) -> None:
    discovery: dict[str, Any] = {"interfaces": ["127.0.0.1"], "serviceType": SERVICE}
    if max_unverified is not None:
        discovery["maxUnverified"] = max_unverified
    config = {
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 5, "sshUser": "claw"},
        "peers": [
            {
                "name": gid,
                "gatewayId": gid,
                "ip": p.address,
                "sshPort": p.port,
                "sshUser": "claw",
                # What the operator believes; the peer's own state.json decides.
                "leadNumber": (p.identity or {}).get("leadNumber"),
            }
            for gid, p in static.items()
        ],
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": TIMEOUT, "offlineAfterMissed": 3},
        "detection": {"indirectProbes": 0},
        "ssh": {
            "knownHosts": str(fleet.directory / "known_hosts"),
            "hostKeyPolicy": policy,
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 1,
        },
        "discovery": discovery,
    }
    home.mkdir(exist_ok=True)
    path = home / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)


async def status(home: Path) -> dict[str, Any]:
    answer = await request(home, "status", wait_seconds=10)
    assert answer["ok"], answer
    return answer


def peer_row(answer: dict[str, Any], gid: str) -> dict[str, Any] | None:
    return next((p for p in answer["peers"] if p["gatewayId"] == gid), None)


async def until(
    daemon: DaemonProcess, check: Callable[[dict[str, Any]], bool], timeout: float
) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        daemon.read()
        assert daemon.proc.poll() is None, daemon.log
        last = await status(daemon.home)
        if check(last):
            return last, time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never matched within {timeout}s: {last}\n{daemon.log[-3000:]}")


async def watch(home: Path, seconds: float) -> list[dict[str, Any]]:
    """Status answers over `seconds` (every 0.2 s): what a user watching would have seen."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(await status(home))
        await asyncio.sleep(0.2)
    return seen


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Callable[[], DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        proc = DaemonProcess(tmp_path / "home")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


async def legit(fleet: SshFleet, address: str, gid: str, lead: int) -> SshPeer:
    peer = await fleet.add_peer(address)
    peer.claim(gid, lead)
    (fleet.directory / "known_hosts").write_text(fleet.known_hosts_text())
    return peer


async def test_an_announcement_never_takes_leadership(
    tmp_path: Path, ssh_fleet: SshFleet, daemon: Callable[[], DaemonProcess]
) -> None:
    """Case 2: `usurper lead 0` at a trusted peer's address and port never leads."""
    b = await legit(ssh_fleet, f"{NET}.2", "gw-b", 3)
    home = tmp_path / "home"
    write_config(home, ssh_fleet, {"gw-b": b})
    proc = daemon()
    await proc.await_log("event=ready")
    await until(proc, lambda s: s["leader"] == "gw-b", 15)
    usurper = claw_peer("usurper", lead_number=0, ip=b.address, ssh_port=b.port, ssh_user="claw")
    async with MdnsPeers(SERVICE, [usurper]):
        seen = await watch(home, 4.0)
    assert {s["leader"] for s in seen} == {"gw-b"}
    assert all(peer_row(s, "usurper") is None for s in seen)
    assert not (home / "peers" / "usurper.json").exists()
    assert peer_row(seen[-1], "gw-b")["status"] == "online"  # type: ignore[index]


async def test_a_known_id_announced_elsewhere_moves_nothing(
    tmp_path: Path, ssh_fleet: SshFleet, daemon: Callable[[], DaemonProcess]
) -> None:
    """Case 3: a static peer's gateway id announced at another address (a rogue SSH server
    there) changes nothing; the conflict is logged once with both addresses."""
    b = await legit(ssh_fleet, f"{NET}.3", "gw-b", 3)
    rogue = await ssh_fleet.add_peer(f"{NET}.4")  # not in known_hosts: never trusted
    rogue.claim("gw-b", 0)
    home = tmp_path / "home"
    write_config(home, ssh_fleet, {"gw-b": b})
    # Only gw-b's own key is trusted (the rogue's server is not in known_hosts).
    (ssh_fleet.directory / "known_hosts").write_text(f"[{b.address}]:{b.port} {b.host_key_line}\n")
    proc = daemon()
    await proc.await_log("event=ready")
    await until(proc, lambda s: (peer_row(s, "gw-b") or {}).get("status") == "online", 15)
    hijack = claw_peer("gw-b", lead_number=0, ip=rogue.address, ssh_port=rogue.port)
    async with MdnsPeers(SERVICE, [hijack]):
        seen = await watch(home, 4.0)
    after = await watch(home, 2.0)  # and after the rogue's goodbye
    for answer in seen + after:
        row = peer_row(answer, "gw-b")
        assert row is not None and row["ip"] == b.address and row["status"] == "online", row
    proc.read()
    assert proc.log.count("mdns_address_conflict") == 1, proc.log[-3000:]
    assert rogue.address in proc.log and "peer_removed" not in proc.log


async def test_a_verified_announcement_becomes_a_peer(
    tmp_path: Path, ssh_fleet: SshFleet, daemon: Callable[[], DaemonProcess]
) -> None:
    """The legitimate path: a peer found only over mDNS is online once its state.json,
    read over SSH with a trusted key, names it; its lead number is the one it holds."""
    d = await legit(ssh_fleet, f"{NET}.5", "gw-d", 2)
    home = tmp_path / "home"
    write_config(home, ssh_fleet, {})
    proc = daemon()
    await proc.await_log("event=ready")
    announced = claw_peer("gw-d", lead_number=50, ip=d.address, ssh_port=d.port, ssh_user="claw")
    started = time.monotonic()  # the announcer's first announcement is part of the wait
    async with MdnsPeers(SERVICE, [announced]):
        answer, _ = await until(
            proc, lambda s: (peer_row(s, "gw-d") or {}).get("status") == "online", 20
        )
        seconds = time.monotonic() - started
        row = peer_row(answer, "gw-d")
        assert row is not None and row["verified"] is True and row["trust"] == "known-hosts"
        await until(proc, lambda s: s["leader"] == "gw-d", 10)  # lead 2 (its own), not 50
    print(f"announce -> online: {seconds:.2f}s")


async def test_a_flood_of_unverified_announcements_is_bounded_and_forgotten(
    tmp_path: Path, ssh_fleet: SshFleet, daemon: Callable[[], DaemonProcess]
) -> None:
    """Case 7: 120 announcements with no SSH server behind them: no peer file, no peer, at
    most maxUnverified held; after their goodbyes none is held."""
    home = tmp_path / "home"
    (ssh_fleet.directory / "known_hosts").write_text("")
    write_config(home, ssh_fleet, {}, max_unverified=50)
    proc = daemon()
    await proc.await_log("event=ready")
    flood = [claw_peer(f"rogue-{n}", ip=f"{NET}.{100 + n}", ssh_port=22) for n in range(120)]
    async with MdnsPeers(SERVICE, flood) as announcers:
        answer, _ = await until(proc, lambda s: len(s.get("unverified", [])) >= 50, 20)
        shown = await asyncio.to_thread(proc.cli, "status")
        assert "50 announcement(s) not proven yet, not peers" in shown.stdout, shown.stdout
        seen = await watch(home, 2.0)
        assert max(len(s["unverified"]) for s in [*seen, answer]) <= 50
        assert all(s["peers"] == [] for s in seen)
        for peer in flood:
            await announcers.unregister(peer.instance)
        await until(proc, lambda s: s["unverified"] == [], 10)
    assert list((home / "peers").glob("*.json")) == [] if (home / "peers").exists() else True
    proc.read()
    assert proc.log.count("mdns_unverified_limit") == 1, proc.log[-2000:]


async def test_a_moved_peer_keeps_its_identity_by_proving_its_pinned_key(
    tmp_path: Path, ssh_fleet: SshFleet, daemon: Callable[[], DaemonProcess]
) -> None:
    """DHCP: gw-e, found over mDNS and pinned, comes back at another address with the same
    host key; announced there, it is verified again and followed."""
    e = await legit(ssh_fleet, f"{NET}.6", "gw-e", 7)
    home = tmp_path / "home"
    write_config(home, ssh_fleet, {})
    proc = daemon()
    await proc.await_log("event=ready")
    first = claw_peer("gw-e", lead_number=7, ip=e.address, ssh_port=e.port, ssh_user="claw")
    async with MdnsPeers(SERVICE, [first]):
        await until(proc, lambda s: (peer_row(s, "gw-e") or {}).get("verified") is True, 20)
    pins = json.loads((home / "trusted-peers.json").read_text())["peers"]
    assert pins["gw-e"]["fingerprint"] == e.host_key.get_fingerprint()
    await e.stop()
    moved = await ssh_fleet.add_peer(f"{NET}.7", start=False)
    moved.host_key, moved.identity = e.host_key, e.identity  # the same machine
    await moved.start()
    again = claw_peer("gw-e", lead_number=7, ip=moved.address, ssh_port=moved.port, ssh_user="claw")
    async with MdnsPeers(SERVICE, [again]):
        answer, _ = await until(
            proc,
            lambda s: (
                (peer_row(s, "gw-e") or {}).get("ip") == moved.address
                and (peer_row(s, "gw-e") or {}).get("status") == "online"
            ),
            30,
        )
    assert peer_row(answer, "gw-e")["verified"] is True  # type: ignore[index]


async def test_a_re_keyed_peer_needs_clawd_peer_trust(
    tmp_path: Path, ssh_fleet: SshFleet, daemon: Callable[[], DaemonProcess]
) -> None:
    """A pinned peer that shows another host key is refused, even when known_hosts is
    updated; `clawd peer trust --yes` pins the new key (operator trust) and it is back."""
    b = await legit(ssh_fleet, f"{NET}.8", "gw-b", 3)
    home = tmp_path / "home"
    write_config(home, ssh_fleet, {"gw-b": b})
    proc = daemon()
    await proc.await_log("event=ready")
    await until(proc, lambda s: (peer_row(s, "gw-b") or {}).get("verified") is True, 15)
    await b.change_host_key()
    (ssh_fleet.directory / "known_hosts").write_text(ssh_fleet.known_hosts_text())
    await until(proc, lambda s: (peer_row(s, "gw-b") or {}).get("status") != "online", 15)
    seen = await watch(home, 2.0)
    assert all((peer_row(s, "gw-b") or {}).get("status") != "online" for s in seen)
    proc.read()
    assert proc.log.count("host_key_differs_from_pin") == 1, proc.log[-3000:]
    # In a thread: the peer's SSH server runs on this test's event loop.
    trusted = await asyncio.to_thread(proc.cli, "peer", "trust", "gw-b", "--yes")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert b.host_key.get_fingerprint() in trusted.stdout
    answer, _ = await until(
        proc, lambda s: (peer_row(s, "gw-b") or {}).get("status") == "online", 20
    )
    assert peer_row(answer, "gw-b")["trust"] == "operator"  # type: ignore[index]


async def test_a_first_use_stranger_never_receives_the_password(
    tmp_path: Path, ssh_fleet: SshFleet, daemon: Callable[[], DaemonProcess]
) -> None:
    """Case 1: under accept-new, a stranger announcing itself (`evil`, a state.json of its
    own, claw-clan missing) is verified by first use only: the reinstall copies config.json
    without the postgres section. One with no state.json at all is never a peer."""
    root = tmp_path / "evil-home"  # its home: SFTP and its shell's HOME
    root.mkdir()
    # The stranger holds a state.json naming `evil`, and its claw-clan scripts are "lost"
    # (the install check below fails there), so the leader reinstalls it.
    evil = await ssh_fleet.add_peer(f"{NET}.9", root=root)
    evil.claim("evil", 50)
    bare_root = tmp_path / "bare-home"
    (bare_root / ".openclaw" / "claw-clan").mkdir(parents=True)
    bare = await ssh_fleet.add_peer(f"{NET}.10", root=bare_root)  # no state.json at all
    home = tmp_path / "home"
    (ssh_fleet.directory / "known_hosts").write_text("")
    write_config(home, ssh_fleet, {}, policy="accept-new")
    config = json.loads((home / "config.json").read_text())
    config["postgres"] = {"host": "db.example.test", "password": "s3cret-pw"}
    config["ssh"]["installCheckCommand"] = "test -f ~/.openclaw/claw-clan/installed"
    (home / "config.json").write_text(json.dumps(config))
    (home / "scripts").mkdir()
    (home / "scripts" / "install.sh").write_text(
        "#!/bin/sh\ntouch ~/.openclaw/claw-clan/installed\n"
    )
    proc = daemon()
    await proc.await_log("event=ready")
    announced = [
        claw_peer("evil", lead_number=50, ip=evil.address, ssh_port=evil.port, ssh_user="claw"),
        claw_peer("bare", lead_number=60, ip=bare.address, ssh_port=bare.port, ssh_user="claw"),
    ]
    pushed = root / ".openclaw" / "claw-clan" / "config.json"
    async with MdnsPeers(SERVICE, announced):
        deadline = time.monotonic() + 30
        while not pushed.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        proc.read()
        assert pushed.exists(), proc.log[-6000:]
        text = pushed.read_text()
        assert "s3cret-pw" not in text and "postgres" not in json.loads(text)
        answer, _ = await until(
            proc, lambda s: (peer_row(s, "evil") or {}).get("trust") == "first-use", 20
        )
        seen = await watch(home, 1.0)
    assert all(peer_row(s, "bare") is None for s in [answer, *seen])
    assert not (bare_root / ".openclaw" / "claw-clan" / "config.json").exists()
    proc.read()
    assert "s3cret-pw" not in proc.log
