"""The control socket: private, answers as large as a 1,000-peer status, bounded clients."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from helpers_backup import capture_logs

from clawd.core.errors import ClawdError
from clawd.serve.control import MAX_DEPTH, ControlServer, Handler, request, socket_path, too_deep


async def test_large_answer_and_private_socket(tmp_path: Path) -> None:
    peers = [{"gatewayId": f"gw-{i:04d}", "name": "x" * 200} for i in range(2000)]

    async def status(_req: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": True, "peers": peers}

    server = ControlServer(socket_path(tmp_path), {"status": status})
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        assert stat.S_IMODE(socket_path(tmp_path).stat().st_mode) == 0o600
        answer = await request(tmp_path, "status")
        assert len(answer["peers"]) == 2000  # well over asyncio's 64 KiB line limit
        bad = await request(tmp_path, "no-such-command")
        assert bad == {"ok": False, "error": "unknown or malformed request"}
    finally:
        server.stop()
        await asyncio.wait_for(task, 5)
    assert not socket_path(tmp_path).exists()
    with pytest.raises(ClawdError, match="no running clawd answers"):
        await request(tmp_path, "status")


# -- bounds (issue 12 item 12) --------------------------------------------------

DROP_BOUND = 5.0  # the server's timeouts below are 0.3 s; a busy machine may be slow


@asynccontextmanager
async def run_server(
    tmp_path: Path, handlers: Mapping[str, Handler], **options: Any
) -> AsyncIterator[ControlServer]:
    server = ControlServer(socket_path(tmp_path), handlers, **options)
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield server
    finally:
        server.stop()
        await asyncio.wait_for(task, 5)


async def status(_req: Mapping[str, Any]) -> dict[str, Any]:
    return {"ok": True}


async def connect(home: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(socket_path(home)))


async def first_line(reader: asyncio.StreamReader) -> dict[str, Any]:
    async with asyncio.timeout(DROP_BOUND):
        line = await reader.readline()
        assert await reader.read() == b""  # and then it closes
    answer: dict[str, Any] = json.loads(line)
    return answer


async def close_all(clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _reader, writer in clients:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_silent_client_is_told_and_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    """Issue 12 item 12: a client that sends nothing does not hold its connection forever."""
    async with run_server(tmp_path, {"status": status}, idle_timeout=0.3):
        reader, writer = await connect(tmp_path)
        started = time.monotonic()
        answer = await first_line(reader)
        assert time.monotonic() - started < DROP_BOUND
        assert answer == {"ok": False, "error": "no request line within 0.3 s"}
        await close_all([(reader, writer)])
        assert await request(tmp_path, "status") == {"ok": True}


async def test_silent_clients_give_their_slots_up_to_a_real_one(tmp_path: Path) -> None:
    """Issue 12 item 12: with every slot held by silent clients, a request is still answered."""
    async with run_server(tmp_path, {"status": status}, max_clients=3, idle_timeout=60):
        idle = [await connect(tmp_path) for _ in range(3)]
        await asyncio.sleep(0.05)  # let the server accept them
        assert await asyncio.wait_for(request(tmp_path, "status"), DROP_BOUND) == {"ok": True}
        answer = await first_line(idle[0][0])  # the oldest one made room
        assert answer["ok"] is False
        assert answer["error"].startswith("too many control connections (at most 3 at a time)")
        await close_all(idle)


async def test_with_every_slot_busy_a_new_client_is_refused_at_once(tmp_path: Path) -> None:
    """Issue 12 item 12: beyond the cap a connection gets one error line, not a hang."""
    release = asyncio.Event()

    async def slow(_req: Mapping[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"ok": True}

    async with run_server(tmp_path, {"slow": slow}, max_clients=2):
        busy = [asyncio.create_task(request(tmp_path, "slow")) for _ in range(2)]
        await asyncio.sleep(0.1)
        refused = await asyncio.wait_for(request(tmp_path, "slow"), DROP_BOUND)
        assert refused["ok"] is False
        assert "too many control connections" in refused["error"]
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*busy), DROP_BOUND) == [{"ok": True}] * 2


async def test_a_flood_of_bad_clients_is_logged_once_per_condition(tmp_path: Path) -> None:
    """Issue 12 item 12: one warning per condition per interval, not one per client."""
    logs = capture_logs()
    async with run_server(tmp_path, {"status": status}, max_clients=5, idle_timeout=0.3):
        idle = [await connect(tmp_path) for _ in range(40)]
        for _ in range(10):
            deep = await connect(tmp_path)
            deep[1].write(b"[" * 1000 + b"\n")
            assert "nested deeper than 32" in (await first_line(deep[0]))["error"]
            await close_all([deep])
        for reader, _writer in idle:
            await first_line(reader)  # each is answered: over the limit or idle
        await close_all(idle)
    events = [ln for ln in logs.getvalue().splitlines() if "control" in ln]
    for event in ("control_clients_over_limit", "control_client_idle", "control_request_too_deep"):
        assert sum(event in ln for ln in events) == 1, events
    assert len(events) == 3, events


async def test_a_normal_client_and_a_connect_only_probe_leave_no_log(tmp_path: Path) -> None:
    """Issue 12 item 12: `clawd status` reads its answer and closes: nothing to warn about."""
    logs = capture_logs()
    async with run_server(tmp_path, {"status": status}):
        assert await request(tmp_path, "status") == {"ok": True}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:  # `daemon_running`
            probe.connect(str(socket_path(tmp_path)))
        await asyncio.sleep(0.2)
        assert await request(tmp_path, "status") == {"ok": True}
    assert "control" not in logs.getvalue()


async def test_brackets_inside_strings_do_not_count_and_a_failing_command_answers(
    tmp_path: Path,
) -> None:
    """Issue 12 item 12: the depth bound reads JSON, and a crashing handler is one answer."""

    async def echo(req: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": True, "why": req["why"]}

    async def broken(_req: Mapping[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    async with run_server(tmp_path, {"status": echo, "broken": broken}):
        name = '[{"\\"[' * 100
        assert await request(tmp_path, "status", why=name) == {"ok": True, "why": name}
        assert await request(tmp_path, "broken") == {
            "ok": False,
            "error": "the command failed; see clawd's log",
        }
        assert (await request(tmp_path, "status", why=1))["ok"] is True
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert too_deep(b"[" * (MAX_DEPTH + 1))
    assert not too_deep(b'[{"a": "' + b"[{" * 100 + b'"}]', limit=2)
    assert too_deep(b'[{"a": "\\\\"}, [[]]]', limit=2)  # "\\\\" is a whole string
