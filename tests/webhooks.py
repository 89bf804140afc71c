"""A webhook receiver on loopback, for notification tests: an aiohttp server that keeps
every JSON body posted to it (Apprise's json:// receivers post there), and can be made
to fail (HTTP 500) to play a receiver that is down."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", path: str = "/hook") -> None:
        self.host = host
        self.path = path
        self.port = 0
        self.posts: list[dict[str, Any]] = []
        self.failing = False  # answer 500: a receiver that is down
        self._runner: web.AppRunner | None = None

    @property
    def apprise_url(self) -> str:
        return f"json://{self.host}:{self.port}{self.path}"

    async def _take(self, request: web.Request) -> web.Response:
        if self.failing:
            return web.Response(status=500, text="down")
        body = await request.json()
        self.posts.append(body if isinstance(body, dict) else {"body": body})
        return web.Response(text="ok")

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post(self.path, self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # A socket of our own, bound to a free port: its number is known before serving.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def titles(self) -> list[str]:
        return [str(p.get("title")) for p in self.posts]

    async def until(
        self, check: Callable[[list[dict[str, Any]]], bool], timeout: float, poll: float = 0.1
    ) -> float:
        """Seconds until `check(posts)` holds; AssertionError after `timeout`."""
        started = time.monotonic()
        for _ in range(int(timeout / poll) + 1):
            if check(self.posts):
                return time.monotonic() - started
            if time.monotonic() - started >= timeout:
                break
            await asyncio.sleep(poll)
        raise AssertionError(f"posts never matched within {timeout} s: {self.titles()}")
