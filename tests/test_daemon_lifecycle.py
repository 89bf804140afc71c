"""`clawd run`'s start and stop as a whole: a component that fails before it is ready fails
the start at once; a second stop signal shortens the ordered shutdown and exits with 1."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from daemonproc import DaemonProcess
from sshpeers import SshFleet, SshPeer

# Well below the daemon's START_SECONDS (60 s): a failure is not waited out.
AT_ONCE_SECONDS = 15.0
# The daemon's STOP_SOURCES_SECONDS: how long a graceful stop waits for a ping round.
STOP_SOURCES_SECONDS = 2.0


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (no SSH banner)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield listener.getsockname()[1]
    listener.close()


def _write_config(home: Path, **extra: object) -> None:
    home.mkdir(parents=True, exist_ok=True)
    data = {
        "instance": {"gatewayId": "gw-a", "name": "alpha", "sshUser": "claw", "leadNumber": 1},
        "discovery": {"enabled": False},
    } | extra
    (home / "config.json").write_text(json.dumps(data))


async def test_a_component_failing_before_ready_fails_the_start_at_once(
    tmp_path: Path, tarpit: int
) -> None:
    # mDNS on an address this machine does not have: discovery fails before it is ready
    # (the other components start meanwhile); the start fails, it is not waited out.
    home = tmp_path / "home"
    _write_config(
        home,
        peers=[{"name": "gw-b", "ip": "127.0.0.1", "sshPort": tarpit}],
        discovery={"interfaces": ["192.0.2.1"]},
    )
    started = time.monotonic()
    daemon = DaemonProcess(home)
    try:
        code = await asyncio.to_thread(daemon.proc.wait, 30)
    finally:
        daemon.stop()
    took = time.monotonic() - started
    assert code == 2, daemon.log
    assert took < AT_ONCE_SECONDS, daemon.log
    assert "event=component_failed" in daemon.log
    assert "check discovery.interfaces" in daemon.log
    assert "event=ready" not in daemon.log
    assert "event=start_timeout" not in daemon.log
    assert "Traceback" not in daemon.log


@pytest.fixture
async def hung_peer(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, SshPeer]]:
    """A connected SSH peer that holds every echo back: each ping round hangs in flight."""
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as fleet:
        peer = await fleet.add_peer("127.0.9.2")
        peer.echo_delay = 60.0
        (keys / "known_hosts").write_text(fleet.known_hosts_text())
        yield fleet, peer


def _hung_home(tmp_path: Path, fleet: SshFleet, peer: SshPeer) -> Path:
    home = tmp_path / "home"
    _write_config(
        home,
        peers=[{"name": "gw-b", "ip": peer.address, "sshPort": peer.port, "sshUser": "claw"}],
        ping={"intervalSeconds": 10, "timeoutSeconds": 9},
        ssh={
            "knownHosts": str(fleet.directory / "known_hosts"),
            "clientKeys": [str(fleet.client_key.path)],
        },
    )
    return home


async def _round_in_flight(daemon: DaemonProcess, peer: SshPeer) -> None:
    await daemon.await_log("event=ready")
    deadline = time.monotonic() + 20
    while not peer.echoes_pending:
        assert time.monotonic() < deadline, f"no ping in flight:\n{daemon.log}"
        await asyncio.sleep(0.05)
        daemon.read()


async def test_a_second_stop_signal_forces_the_exit_with_code_1(
    tmp_path: Path, hung_peer: tuple[SshFleet, SshPeer]
) -> None:
    fleet, peer = hung_peer
    with DaemonProcess(_hung_home(tmp_path, fleet, peer)) as daemon:
        await _round_in_flight(daemon, peer)
        daemon.proc.send_signal(signal.SIGTERM)
        await daemon.await_log("event=stop_requested", 5)
        forced_at = time.monotonic()
        code = await asyncio.to_thread(daemon.stop, signal.SIGTERM)
        took = time.monotonic() - forced_at
    assert code == 1, daemon.log
    assert "event=stop_forced" in daemon.log
    assert "event=stop_timeout" not in daemon.log  # cancelled, not waited for
    assert "Traceback" not in daemon.log
    assert took < STOP_SOURCES_SECONDS, daemon.log


async def test_a_graceful_stop_waits_for_a_round_in_flight_then_exits_0(
    tmp_path: Path, hung_peer: tuple[SshFleet, SshPeer]
) -> None:
    # The counterpart of the test above: without a second signal the same stop waits.
    fleet, peer = hung_peer
    with DaemonProcess(_hung_home(tmp_path, fleet, peer)) as daemon:
        await _round_in_flight(daemon, peer)
        stop_at = time.monotonic()
        code = await asyncio.to_thread(daemon.stop, signal.SIGTERM)
        took = time.monotonic() - stop_at
    assert code == 0, daemon.log
    assert "event=stop_timeout component=pinger" in daemon.log
    assert took >= STOP_SOURCES_SECONDS - 0.1, daemon.log
    assert "event=stop_forced" not in daemon.log
