"""The control socket of a running `clawd run` under an idle flood and hostile lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from daemonproc import DaemonProcess

from clawd.serve.control import request, socket_path

FLOOD = 1500
# systemd's default soft limit, the one the 1,500-client flood exhausted.
DAEMON_NOFILE = 1024
# The daemon holds at most 64 control clients; a few more fds come and go meanwhile.
FD_MARGIN = 64 + 36
CONNECT_TIMEOUT = 5
SNDTIMEO = struct.pack("ll", CONNECT_TIMEOUT, 0)
# "A few seconds" with room for a busy 2-core machine.
ANSWER_WITHIN = 8.0


@contextlib.contextmanager
def fd_limit_at_least(wanted: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE to `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail(f"the hard fd limit {hard} is below the {wanted} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def fd_count(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


@contextlib.asynccontextmanager
async def daemon_on(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    """A daemon with no peers, limited to 1,024 fds; its log is read as it comes."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"discovery": {"enabled": False}}))
    with DaemonProcess(home, prefix=("prlimit", f"--nofile={DAEMON_NOFILE}:{DAEMON_NOFILE}")) as d:
        await d.await_log("event=ready")

        async def keep_reading() -> None:  # a full stderr pipe would stall the daemon
            while True:
                d.read()
                await asyncio.sleep(0.1)

        reader = asyncio.create_task(keep_reading())
        try:
            yield d
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        assert d.stop() == 0, d.log


def open_idle(path: Path, count: int) -> list[socket.socket]:
    """Up to `count` connections that never send anything; stops at the first that fails."""
    opened: list[socket.socket] = []
    deadline = time.monotonic() + 60
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking connect waits for room in the listen backlog, bounded by SO_SNDTIMEO
        # (a socket timeout would make it non-blocking: EAGAIN at once on a full backlog).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, SNDTIMEO)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            break
        opened.append(sock)
        if time.monotonic() > deadline:
            break
    return opened


def one_line(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """The first line the server sends (b"" if it closes without one)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while b"\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
    return data.partition(b"\n")[0]


def control_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "control" in ln or "Traceback" in ln]


async def test_an_idle_flood_neither_locks_out_status_nor_floods_the_log(
    tmp_path: Path,
) -> None:
    """Issue 12 item 12: 1,500 idle clients; status still answers, fds and log stay bounded."""
    async with daemon_on(tmp_path) as daemon:
        path = socket_path(daemon.home)
        base_fds = fd_count(daemon.proc.pid)
        mark = len(daemon.log)
        with fd_limit_at_least(FLOOD + 512):
            idle = await asyncio.to_thread(open_idle, path, FLOOD)
            try:
                assert len(idle) == FLOOD, "the daemon stopped accepting connections"
                started = time.monotonic()
                answer = await asyncio.wait_for(request(daemon.home, "status"), ANSWER_WITHIN)
                took = time.monotonic() - started
                assert answer.get("ok") is True, answer
                assert took < ANSWER_WITHIN
                assert fd_count(daemon.proc.pid) <= base_fds + FD_MARGIN
                # The oldest idle client gave its slot up with a one-line answer.
                refused = json.loads(await asyncio.to_thread(one_line, idle[0]))
                assert refused["ok"] is False
                assert "too many control connections" in refused["error"]
            finally:
                for sock in idle:
                    sock.close()
        await asyncio.sleep(0.5)
        daemon.read()
        about_it = control_lines(daemon.log[mark:])
        assert len(about_it) <= 5, "\n".join(about_it[:20])


async def test_a_hostile_line_gets_one_error_answer_and_the_daemon_lives_on(
    tmp_path: Path,
) -> None:
    """Issue 12 item 12: a 20,000-deep `[[[…` line and a 1 MB line each get one error answer."""
    async with daemon_on(tmp_path) as daemon:
        path = socket_path(daemon.home)
        for line, expected in (
            (b"[" * 20_000 + b"\n", "nested deeper"),
            (b'{"a":' * 12_000 + b"\n", "nested deeper"),  # 60 kB, under the size limit
            (b"x" * (1024 * 1024) + b"\n", "longer than"),
        ):
            answer = await asyncio.to_thread(send_and_read, path, line)
            assert json.loads(answer) == {"ok": False, "error": answer_error(answer)}
            assert expected in answer_error(answer)
            assert daemon.proc.poll() is None, daemon.log
        status = await asyncio.wait_for(request(daemon.home, "status"), ANSWER_WITHIN)
        assert status.get("ok") is True
        assert "RecursionError" not in daemon.log
        assert "Traceback" not in daemon.log


def answer_error(answer: bytes) -> str:
    error: str = json.loads(answer)["error"]
    return error


def send_and_read(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        with contextlib.suppress(OSError):  # the server may stop reading a huge line
            sock.sendall(line)
        return one_line(sock)


async def test_a_plain_status_leaves_no_warning_in_the_log(tmp_path: Path) -> None:
    """Issue 12 item 12: `clawd status` (and `--live`) make the daemon log no warning."""
    async with daemon_on(tmp_path) as daemon:
        mark = len(daemon.log)
        for args in (("status",), ("status", "--live"), ("status", "--json")):
            done = await asyncio.to_thread(daemon.cli, *args)
            assert done.returncode == 0, done.stderr
        await asyncio.sleep(0.5)
        daemon.read()
        new = daemon.log[mark:]
        assert "control_request_failed" not in new
        assert not control_lines(new), new
