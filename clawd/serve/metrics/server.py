"""The optional Prometheus endpoint: GET /metrics, one route of clawd's web server."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from clawd.config.settings import Settings
from clawd.core.errors import MetricsServerError
from clawd.serve.metrics.registry import FleetMetrics
from clawd.serve.metrics.webserver import HEAD_TIMEOUT, WRITE_TIMEOUT, WebServer

log = structlog.get_logger("clawd.serve.metrics")

PATH = "/metrics"


def metrics_routes(metrics: FleetMetrics) -> list[web.RouteDef]:
    """GET and HEAD /metrics: the text exposition as of the request."""

    async def scrape(_request: web.Request) -> web.Response:
        try:
            body = metrics.exposition()
        except Exception as exc:  # a broken source must not take the endpoint down
            log.error("metrics_scrape_failed", error=repr(exc))
            return web.Response(status=500, text="scrape failed; see clawd's log\n")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get(PATH, scrape)]


class MetricsServer(WebServer):
    """clawd's web server with the /metrics route: what the daemon starts for metrics.listen."""

    def __init__(
        self,
        address: tuple[str, int],
        metrics: FleetMetrics,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        routes = metrics_routes(metrics)
        super().__init__(address, routes, head_timeout=head_timeout, write_timeout=write_timeout)
        self.metrics = metrics


class MetricsEndpoint:
    """`metrics.listen` as a component: serves nothing while it is off, restarts its server
    on a reload that changes it. At start a busy port is an error to fix (the start fails);
    after a reload it only logs."""

    name = "metrics"

    def __init__(self, address: tuple[str, int] | None, metrics: FleetMetrics) -> None:
        self.address = address
        self.metrics = metrics
        self.server: MetricsServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stopped = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self.address is not None and not self._stopped.is_set():
                    self.server = MetricsServer(self.address, self.metrics)
                    self._task = tg.create_task(self.server.run(ready), name="metrics")
                else:
                    ready.set()
                await self._stopped.wait()
        finally:
            self._tg = None

    def stop(self) -> None:
        self._stopped.set()
        if self.server is not None:
            self.server.stop()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        if "metrics" not in changed:
            return
        if self.server is not None:
            self.server.stop()
            if self._task is not None:
                await self._task
            self.server = self._task = None
        self.address = settings.metrics.address()
        if self.address is None:
            log.info("metrics_off")
            return
        if self._tg is None or self._stopped.is_set():
            return  # stopping: nothing to serve any more
        server = MetricsServer(self.address, self.metrics)
        self.server = server
        self._task = self._tg.create_task(self._serve(server), name="metrics")

    @staticmethod
    async def _serve(server: MetricsServer) -> None:
        try:
            await server.run(asyncio.Event())
        except MetricsServerError as exc:
            log.error("metrics_unavailable", error=str(exc))
