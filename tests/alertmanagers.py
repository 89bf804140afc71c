"""A real Alertmanager (Debian's prometheus-alertmanager) on loopback, for tests: routed to a
webhook (tests/webhooks.py) that keeps what Alertmanager notifies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BINARY = "/usr/bin/prometheus-alertmanager"
NOT_FOUND = (
    f"Alertmanager not found ({BINARY}): run scripts/install-system-deps.sh "
    "(installs Debian's prometheus-alertmanager)"
)
READY_WAIT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONFIG = """\
route:
  receiver: hook
  group_by: ['alertname', 'gateway']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:{port}/hook
        send_resolved: true
"""


@dataclass
class Alertmanager:
    url: str
    process: asyncio.subprocess.Process
    log: Path

    async def alerts(self) -> list[dict[str, Any]]:
        """What its API shows as alerts (only those not resolved)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v2/alerts") as answer,
        ):
            assert answer.status == 200
            alerts: list[dict[str, Any]] = await answer.json()
            return alerts

    async def names(self) -> list[tuple[str, str]]:
        return sorted(
            (a["labels"]["alertname"], a["labels"].get("gateway", "")) for a in await self.alerts()
        )


def installed() -> bool:
    return os.access(BINARY, os.X_OK)


@contextlib.asynccontextmanager
async def running_alertmanager(webhook_port: int, home: Path) -> AsyncIterator[Alertmanager]:
    """Alertmanager with its config and storage in `home`, routing to the webhook on
    `webhook_port`; ready when entered, stopped (and waited for) on the way out."""
    if not installed():
        raise RuntimeError(NOT_FOUND)
    home.mkdir(parents=True, exist_ok=True)
    (home / "am.yml").write_text(CONFIG.format(port=webhook_port))
    port = free_port()
    log = home / "alertmanager.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            BINARY,
            f"--config.file={home / 'am.yml'}",
            f"--storage.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            stdout=out,
            stderr=out,
        )
    made = Alertmanager(f"http://127.0.0.1:{port}", process, log)
    try:
        await _ready(made)
        yield made
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _ready(am: Alertmanager) -> None:
    deadline = time.monotonic() + READY_WAIT
    async with aiohttp.ClientSession() as session:
        while True:
            if am.process.returncode is not None:
                raise AssertionError(f"alertmanager exited: {am.log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{am.url}/-/ready") as answer:
                    if answer.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"alertmanager not ready in {READY_WAIT} s: {am.log.read_text()}"
                )
            await asyncio.sleep(0.1)
