"""clawd's HTTP server: aiohttp with bounded request heads and timeouts; routes are given.

/metrics is one route of it (clawd/serve/metrics/routes.py); more can be added alongside.
aiohttp holds a slow client at the cost of a small protocol object, so slow or idle
connections never crowd out a scrape, and its parser answers an oversized head with 400.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from clawd.core.errors import MetricsServerError
from clawd.serve.metrics.linger import LingeringSite
from clawd.serve.metrics.weblog import server_logger

log = structlog.get_logger("clawd.serve.metrics")

# Prometheus sends its whole request at once; a connection without a complete request
# head by then is closed (aiohttp's keep-alive timer also runs before the first request).
HEAD_TIMEOUT = 10.0
# A client that stops reading its answer must not keep a connection forever.
WRITE_TIMEOUT = 30.0
# A scrape's head is well under 1 kB; aiohttp's own line and field limits (8 KiB each)
# and 32 headers at most bound what a client can make the server buffer.
MAX_LINE = 8190
MAX_HEADERS = 32
# Enough for a burst of concurrent scrapers while the loop is busy.
BACKLOG = 512
# Stopping waits this long for answers in flight, then closes every connection.
SHUTDOWN_TIMEOUT = 2.0


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    # asyncio rewords bind errors as "error while attempting to bind on address …".
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)


def _bounded_answers(write_timeout: float) -> Middleware:
    """Middleware: one request per connection, and the answer written within a timeout.

    A scraper comes every 15 s or so: a kept-alive connection would only sit idle. A
    client that stops reading has its connection aborted instead of holding it forever.
    """

    @web.middleware
    async def bounded(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            answer = await handler(request)
        except web.HTTPException as exc:  # 404, 405: answered like any other response
            answer = web.Response(
                status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers
            )
        if answer.prepared:  # a streaming handler wrote it already
            return answer
        answer.force_close()
        try:
            async with asyncio.timeout(write_timeout):
                await answer.prepare(request)
                await answer.write_eof()
        except TimeoutError:
            log.debug("web_client_dropped", path=request.path, error="write timeout")
            if request.transport is not None:
                request.transport.abort()
        return answer

    return bounded


class WebServer:
    """Serves `routes` on `address` from run(ready) until stop()."""

    def __init__(
        self,
        address: tuple[str, int],
        routes: Iterable[web.AbstractRouteDef],
        *,
        head_timeout: float = HEAD_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.address = address
        self.app = web.Application(middlewares=[_bounded_answers(write_timeout)])
        self.app.add_routes(routes)
        self.head_timeout = head_timeout
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0); only after `ready` is set."""
        assert self._runner is not None and self._runner.addresses, "the server is not listening"
        port: int = self._runner.addresses[0][1]
        return port

    async def run(self, ready: asyncio.Event) -> None:
        """Listen, set `ready`, serve until stop(); MetricsServerError if it cannot bind."""
        host, port = self.address
        runner = web.AppRunner(
            self.app,
            handle_signals=False,  # the daemon owns the signals
            access_log=None,
            keepalive_timeout=self.head_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            logger=server_logger(),
        )
        await runner.setup()
        self._runner = runner
        try:
            try:
                await LingeringSite(runner, host, port, BACKLOG).start()
            except OSError as exc:
                where = format_address(host, port)
                raise MetricsServerError(
                    f"cannot serve metrics on {where} (metrics.listen): {_reason(exc)}"
                ) from exc
            log.info("metrics_listening", address=format_address(host, self.port))
            ready.set()
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        """Ask run() to close the listener and every open connection and return."""
        self._stopped.set()
