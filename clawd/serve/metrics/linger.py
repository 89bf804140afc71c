"""A lingering close: a refused client reads its 4xx answer instead of a TCP reset.

aiohttp answers an oversized request head with 400 and closes at once, while the client
may still be sending it. Closing a TCP socket with bytes unread makes the kernel send a
reset, and a client that writes its whole request before reading then never sees the
answer. So when a connection closes with request bytes unread, its socket is kept open
a little longer (duplicated past asyncio's close): its sending side shut, what the
client still sends read and dropped, up to a time and byte bound — nginx's
lingering_close.
"""

from __future__ import annotations

import asyncio
import os
import socket

from aiohttp import web

LINGER_SECONDS = 5.0
LINGER_BYTES = 4 * 1024 * 1024
MAX_LINGERING = 256  # beyond this many at once, a refused client gets the plain close


class Lingerer:
    """Holds the sockets of connections the server closed while the client had not."""

    def __init__(self) -> None:
        self._held: dict[socket.socket, asyncio.TimerHandle] = {}

    def hold(self, transport: asyncio.BaseTransport) -> None:
        """Keep `transport`'s socket reading and dropping input after asyncio closes it."""
        sock = transport.get_extra_info("socket")
        if sock is None or len(self._held) >= MAX_LINGERING:
            return
        try:
            held = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return
        try:
            held.setblocking(False)
            held.shutdown(socket.SHUT_WR)  # the answer is complete: the client sees its end
        except OSError:
            held.close()
            return
        loop = asyncio.get_running_loop()
        self._held[held] = loop.call_later(LINGER_SECONDS, self._release, held)
        loop.add_reader(held.fileno(), self._drop_input, held, [0])

    def _drop_input(self, held: socket.socket, dropped: list[int]) -> None:
        try:
            data = held.recv(64 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        dropped[0] += len(data)
        if not data or dropped[0] > LINGER_BYTES:
            self._release(held)

    def _release(self, held: socket.socket) -> None:
        timer = self._held.pop(held, None)
        if timer is None:
            return
        timer.cancel()
        asyncio.get_running_loop().remove_reader(held.fileno())
        held.close()

    def close(self) -> None:
        for held in list(self._held):
            self._release(held)


class _LingeringClose(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a lingering close."""

    def __init__(self, inner: asyncio.Protocol, lingerer: Lingerer) -> None:
        self._inner = inner
        self._lingerer = lingerer
        self._transport: asyncio.BaseTransport | None = None
        self._client_closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._client_closed = True
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        # Called before asyncio closes the socket: the last moment to keep it open.
        if exc is None and not self._client_closed and self._transport is not None:
            self._lingerer.hold(self._transport)
        self._inner.connection_lost(exc)


class LingeringSite(web.BaseSite):
    """aiohttp's TCPSite, with a lingering close for every connection."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, backlog: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._lingerer = Lingerer()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        lingerer = self._lingerer
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _LingeringClose(server(), lingerer),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )

    async def stop(self) -> None:
        await super().stop()
        self._lingerer.close()
