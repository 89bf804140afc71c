"""The control socket: private, and answers as large as a 1,000-peer status."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from clawd.control import ControlServer, request, socket_path
from clawd.errors import ClawdError


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
