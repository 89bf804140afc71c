"""The optional Prometheus endpoint: GET /metrics, one route of clawd's web server."""

from __future__ import annotations

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from clawd.metrics.registry import FleetMetrics
from clawd.metrics.webserver import HEAD_TIMEOUT, WRITE_TIMEOUT, WebServer

log = structlog.get_logger("clawd.metrics")

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
