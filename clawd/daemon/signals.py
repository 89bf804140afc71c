"""Signal handlers that only set flags and queue a request; the daemon's loop acts on them.

Like uvicorn's server: the first SIGTERM/SIGINT asks for a graceful stop, a second one
forces it (the same ordered shutdown, cancelling instead of waiting). Nothing is logged
and no work starts inside a handler, so no failure there can keep clawd up.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from typing import Literal

Kind = Literal["stop", "force", "reload", "backup"]
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


@dataclass(frozen=True, slots=True)
class Request:
    kind: Kind
    signame: str


class Signals:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.forced = asyncio.Event()
        self._requests: asyncio.Queue[Request] = asyncio.Queue()

    def on_stop(self, signame: str = "SIGTERM") -> None:
        """The first request stops gracefully; a second one forces the exit."""
        if self.stopping.is_set():
            self.forced.set()
            self._requests.put_nowait(Request("force", signame))
            return
        self.stopping.set()
        self._requests.put_nowait(Request("stop", signame))

    def on_request(self, kind: Kind, signame: str) -> None:
        self._requests.put_nowait(Request(kind, signame))

    async def next(self) -> Request:
        return await self._requests.get()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.on_request, "reload", "SIGHUP")
        loop.add_signal_handler(signal.SIGUSR1, self.on_request, "backup", "SIGUSR1")

    @staticmethod
    def remove(loop: asyncio.AbstractEventLoop) -> None:
        for sig in HANDLED:
            loop.remove_signal_handler(sig)
