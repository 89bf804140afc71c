"""The optional Prometheus endpoint: GET /metrics over a minimal asyncio HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import structlog
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from clawd.errors import MetricsServerError
from clawd.metrics.http import MAX_HEAD, BadRequest, read_request, response
from clawd.metrics.registry import FleetMetrics

log = structlog.get_logger("clawd.metrics")

PATH = "/metrics"
HEAD_TIMEOUT = 10.0  # Prometheus sends its whole request at once; slower is not a scraper
WRITE_TIMEOUT = 30.0  # a client that stops reading must not keep a connection forever
MAX_CLIENTS = 32  # bounds memory against a connection flood; a scraper needs one


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    # asyncio rewords bind errors as "error while attempting to bind on address …".
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)


class MetricsServer:
    def __init__(
        self,
        address: tuple[str, int],
        metrics: FleetMetrics,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.address = address
        self.metrics = metrics
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.max_clients = max_clients
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0); only after `ready` is set."""
        assert self._server is not None, "the metrics server is not listening"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def run(self, ready: asyncio.Event) -> None:
        """Listen, set `ready`, serve until stop(); MetricsServerError if it cannot bind."""
        host, port = self.address
        where = format_address(host, port)
        try:
            self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        except OSError as exc:
            reason = _reason(exc)
            raise MetricsServerError(
                f"cannot serve metrics on {where} (metrics.listen): {reason}"
            ) from exc
        log.info("metrics_listening", address=format_address(host, self.port))
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            self._server.close()
            # 3.11's wait_closed() does not wait for open connections: close them here.
            for writer in list(self._clients):
                writer.close()
            await self._server.wait_closed()

    def stop(self) -> None:
        """Ask run() to close the listener and any open connections and return."""
        self._stopped.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= self.max_clients:
            writer.write(response(503, b"too many connections\n"))
            writer.close()
            return
        self._clients.add(writer)
        try:
            answer = await self._answer(reader)
            if answer is not None:
                writer.write(answer)
                async with asyncio.timeout(self.write_timeout):
                    await writer.drain()
        except (ConnectionError, TimeoutError) as exc:
            log.debug("metrics_client_dropped", error=type(exc).__name__)
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes | None:
        """The response to one request; None when the client sent nothing."""
        try:
            async with asyncio.timeout(self.head_timeout):
                request = await read_request(reader)
        except BadRequest as exc:
            return response(400, f"{exc}\n".encode())
        if request is None:
            return None
        if request.path != PATH:
            return response(404, b"not found; metrics are at /metrics\n")
        if request.method not in ("GET", "HEAD"):
            return response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        try:
            body = self.metrics.exposition()
        except Exception as exc:  # a broken source must not take the endpoint down
            log.error("metrics_scrape_failed", error=repr(exc))
            return response(500, b"scrape failed; see clawd's log\n")
        return response(200, body, CONTENT_TYPE_LATEST, head_only=request.method == "HEAD")
