"""`clawd run` as a user runs it: ready line, systemd notifications, clean stop on signals."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import START_TIMEOUT, DaemonProcess

# A service type of this run's own: parallel test runs on one machine must not
# see each other's daemons over mDNS.
SERVICE = f"_c{secrets.token_hex(3)}._tcp.local."


def _config(home: Path, **extra: object) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    data = {
        "instance": {"gatewayId": "gw-a", "name": "alpha", "sshUser": "claw", "leadNumber": 1},
        "discovery": {"interfaces": ["127.0.0.1"], "serviceType": SERVICE},
    } | extra
    path = home / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(START_TIMEOUT)
    yield sock, path
    sock.close()


def _datagrams_until(sock: socket.socket, needle: str) -> list[str]:
    """Every notify message up to and including the first that contains `needle`."""
    seen: list[str] = []
    for _ in range(100):
        seen.append(sock.recv(4096).decode())
        if needle in seen[-1]:
            return seen
    raise AssertionError(f"{needle} never sent; got {seen}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_logs_ready_then_stops_cleanly(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], sig: signal.Signals
) -> None:
    home = tmp_path / "home"
    _config(home, peers=[{"name": "gw-b", "ip": "127.0.0.2", "sshPort": 2222}])
    sock, sock_path = notify_socket
    with DaemonProcess(home, {"NOTIFY_SOCKET": sock_path}) as daemon:
        ready = daemon.wait_log("event=ready")
        assert "level=info" in ready and "backend=json" in ready and "gateway=gw-a" in ready
        before_ready = _datagrams_until(sock, "READY=1")
        assert before_ready[-1].startswith("READY=1")
        assert "STATUS=1 peer: 1 unknown; leader " in before_ready[-1]
        # The start-up election waits a few seconds for mDNS finds (issue 12 item 11): its
        # leader is in READY's status, or in a status sent after it.
        if "leader gw-a" not in before_ready[-1]:
            assert "leader gw-a" in _datagrams_until(sock, "leader gw-a")[-1]
        # Static peers from config.json have peer files the seed's scripts can read.
        peer = json.loads((home / "peers" / "gw-b.json").read_text())
        assert (peer["ip"], peer["sshUser"], peer["status"]) == ("127.0.0.2", "claw", "unknown")
        assert json.loads((home / "state.json").read_text())["sshUser"] == "claw"
        # The seed's `psql -f <home>/migrations/001-initial-schema.sql` finds its file.
        assert (home / "migrations" / "001-initial-schema.sql").is_file()

        started = time.monotonic()
        assert daemon.stop(sig, timeout=10) == 0
        assert time.monotonic() - started < 5
        assert _datagrams_until(sock, "STOPPING=1")[-1] == "STOPPING=1"
        assert "event=stopped" in daemon.log
        assert "Traceback" not in daemon.log


def test_run_survives_a_malformed_peer_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _config(home)
    (home / "peers").mkdir()
    (home / "peers" / "gw-z.json").write_text("{ not json")
    with DaemonProcess(home) as daemon:
        daemon.wait_log("event=ready")
        assert "event=peer_file_quarantined" in daemon.log and "gw-z.json" in daemon.log
        names = [p.name for p in (home / "peers").iterdir()]
        assert len(names) == 1 and names[0].startswith("gw-z.json.corrupt-")
        assert daemon.stop() == 0


def test_run_with_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _config(home, backend="mysql")
    with DaemonProcess(home) as daemon:
        assert daemon.proc.wait(timeout=20) == 2
        daemon.read()
        assert "backend: 'mysql' is not one of json, postgres" in daemon.log
        assert "Traceback" not in daemon.log


@pytest.mark.parametrize("own_pid", [True, False])
def test_watchdog_is_fed_from_the_loop_only_for_its_own_pid(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], own_pid: bool
) -> None:
    home = tmp_path / "home"
    _config(home)
    sock, sock_path = notify_socket
    env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
    if not own_pid:
        env["WATCHDOG_PID"] = "1"  # armed for another process: not ours to feed
    with DaemonProcess(home, env) as daemon:
        _datagrams_until(sock, "READY=1")
        sock.settimeout(0.2)
        feeds, deadline = 0, time.monotonic() + 1.2
        while time.monotonic() < deadline:
            try:
                feeds += sock.recv(4096) == b"WATCHDOG=1"
            except TimeoutError:
                continue
        # Every 0.2 s (half of WATCHDOG_USEC): about 6 in 1.2 s.
        assert (feeds >= 4) if own_pid else (feeds == 0)
        assert daemon.stop(timeout=10) == 0
