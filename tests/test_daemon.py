"""`clawd run` as a user runs it: ready line, systemd notifications, clean stop on signals."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 20.0
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


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line:
            lines.append(line)
            if needle in line:
                return lines
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.02)
    raise AssertionError(f"no {needle!r} within {timeout}s; got: {''.join(lines)}")


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


def _start(home: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, CLAW_HOME=str(home), **(env_extra or {}))
    env.pop("JOURNAL_STREAM", None)
    return subprocess.Popen(
        [sys.executable, "-m", "clawd.cli", "run"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_logs_ready_then_stops_cleanly(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], sig: signal.Signals
) -> None:
    home = tmp_path / "home"
    _config(home, peers=[{"name": "gw-b", "ip": "127.0.0.2", "sshPort": 2222}])
    sock, sock_path = notify_socket
    proc = _start(home, {"NOTIFY_SOCKET": sock_path})
    try:
        lines = _wait_for_line(proc, "event=ready", START_TIMEOUT)
        ready = lines[-1]
        assert "level=info" in ready and "backend=json" in ready and "gateway=gw-a" in ready
        before_ready = _datagrams_until(sock, "READY=1")
        assert before_ready[-1].startswith("READY=1")
        assert "STATUS=1 peer: 1 unknown; leader gw-a" in before_ready[-1]
        # Static peers from config.json have peer files the seed's scripts can read.
        peer = json.loads((home / "peers" / "gw-b.json").read_text())
        assert (peer["ip"], peer["sshUser"], peer["status"]) == ("127.0.0.2", "claw", "unknown")
        assert json.loads((home / "state.json").read_text())["sshUser"] == "claw"
        # The seed's `psql -f <home>/migrations/001-initial-schema.sql` finds its file.
        assert (home / "migrations" / "001-initial-schema.sql").is_file()

        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert _datagrams_until(sock, "STOPPING=1")[-1] == "STOPPING=1"
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert "event=stopped" in rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_run_survives_a_malformed_peer_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _config(home)
    (home / "peers").mkdir()
    (home / "peers" / "gw-z.json").write_text("{ not json")
    proc = _start(home)
    try:
        lines = _wait_for_line(proc, "event=ready", START_TIMEOUT)
        text = "".join(lines)
        assert "event=peer_file_quarantined" in text and "gw-z.json" in text
        assert [p.name.startswith("gw-z.json.corrupt-") for p in (home / "peers").iterdir()] == [
            True
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_run_with_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _config(home, backend="mysql")
    proc = _start(home)
    try:
        assert proc.wait(timeout=20) == 2
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "backend: 'mysql' is not one of json, postgres" in err
        assert "Traceback" not in err
    finally:
        if proc.stderr:
            proc.stderr.close()


def test_second_daemon_with_the_same_gateway_id_exits_with_a_clear_error(tmp_path: Path) -> None:
    first_home, second_home = tmp_path / "one", tmp_path / "two"
    _config(first_home)
    _config(second_home)
    first = _start(first_home)
    try:
        _wait_for_line(first, "event=ready", START_TIMEOUT)
        second = _start(second_home)
        try:
            assert second.wait(timeout=30) == 2
            assert second.stderr is not None
            err = second.stderr.read()
            assert "error: another machine already announces 'gw-a." in err
            assert "Traceback" not in err
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
            if second.stderr:
                second.stderr.close()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if first.stderr:
            first.stderr.close()


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
    proc = _start(home, env)
    try:
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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
