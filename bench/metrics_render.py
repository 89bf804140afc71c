"""The cost of one Prometheus scrape at 1,000 peers: clawd's renderer vs generate_latest.

Both render the same registry (a FleetMetrics over a 1,000-peer view, 4 statuses mixed,
a few pings and incidents counted), in the same process, interleaved run by run:

* clawd: ``FleetMetrics.exposition()`` -- the fast per-peer text (clawd/serve/metrics/text.py)
  plus generate_latest for the remaining families;
* reference: ``prometheus_client.generate_latest(metrics.registry)``;
* end to end: ``GET /metrics`` over loopback from the aiohttp server (clawd's
  ``MetricsServer``), one connection per scrape as Prometheus does with clawd.

The render holds the event loop (every ping waits for it), so its time is the figure.
Run: ``.venv/bin/python -m bench.metrics_render [--quick]``. In ``bench/run.py``:
``metrics_render.SECTION: lambda quick: metrics_render.run(quick)``.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.exposition import generate_latest

from clawd.core.model import EventType, Incident, Instance, PeerState, PeerStatus
from clawd.core.observations import PingResult
from clawd.decide.view import FleetView, PeerRecord
from clawd.serve.metrics.registry import FleetMetrics
from clawd.serve.metrics.server import MetricsServer
from clawd.serve.metrics.source import BackupState, PostgresState

SECTION = "metrics-render"
PEERS = 1000
# clawd's renderer is kept only while it clearly pays: at most half the reference's time.
GOAL_RATIO = 0.5


@dataclass
class _Source:
    view: FleetView

    def fleet_view(self) -> FleetView:
        return self.view

    def backup_state(self) -> BackupState:
        return BackupState(last_success=datetime.now(UTC), last_size_bytes=1, last_duration_s=1)

    def postgres_state(self) -> PostgresState | None:
        return PostgresState(connected=True, spool_bytes=0)

    def loop_lag_ms(self) -> Mapping[str, float]:
        return {"p50": 0.1, "p99": 1.0, "max": 2.0}


def fleet_metrics(peers: int = PEERS) -> FleetMetrics:
    statuses = list(PeerStatus)
    records = {}
    for i in range(peers):
        gid = f"gw-{i:04d}"
        state = PeerState(gid, status=statuses[i % 4], missed_pings=i % 5)
        records[gid] = PeerRecord(Instance(gid, f"claw-{i}", lead_number=i + 10), state, phi=i % 7)
    me = Instance("gw-me", "myself", lead_number=1)
    metrics = FleetMetrics(_Source(FleetView(me, records, leader="gw-0001")))
    for i in range(200):
        metrics.observe_ping(PingResult(f"gw-{i:04d}", datetime.now(UTC), i % 9 != 0, i % 40))
    metrics.count_incident(Incident("gw-0002", EventType.OFFLINE))
    return metrics


def _ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _stats(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return ordered[0], statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


async def _scrapes(metrics: FleetMetrics, runs: int) -> list[float]:
    server = MetricsServer(("127.0.0.1", 0), metrics)
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    await ready.wait()
    request = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    took = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            body = await reader.read()
            writer.close()
            await writer.wait_closed()
            took.append((time.perf_counter() - started) * 1000)
            assert body.startswith(b"HTTP/1.1 200 "), body[:100]
    finally:
        server.stop()
        await task
    return took


def run(quick: bool = False) -> str:
    runs = 30 if quick else 300
    metrics = fleet_metrics()
    assert len(metrics.exposition()) > 100_000
    clawd, reference = [], []
    for _ in range(runs):  # interleaved, so a busy moment costs both alike
        clawd.append(_ms(metrics.exposition))
        reference.append(_ms(lambda: generate_latest(metrics.registry)))
    http = asyncio.run(_scrapes(metrics, runs))
    size = len(metrics.exposition())
    c, r, h = _stats(clawd), _stats(reference), _stats(http)
    ratio = c[1] / r[1]
    verdict = f"{ratio / GOAL_RATIO:.2f} " + ("✓" if ratio <= GOAL_RATIO else "✗")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""## Scrape render at 1,000 peers (clawd's renderer vs generate_latest)

{when}, {platform.python_implementation()} {platform.python_version()}, {runs} runs each,
interleaved, one process; body {size:,} bytes. `{"--quick" if quick else "full"}` run.

| render | min ms | median ms | p99 ms |
|---|---|---|---|
| clawd `FleetMetrics.exposition()` | {c[0]:.2f} | {c[1]:.2f} | {c[2]:.2f} |
| `generate_latest(registry)` | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} |
| `GET /metrics` end to end (aiohttp, loopback) | {h[0]:.2f} | {h[1]:.2f} | {h[2]:.2f} |

| figure | goal | measured | ratio |
|---|---|---|---|
| clawd render / generate_latest (median) | ≤ {GOAL_RATIO} | {ratio:.2f} | {verdict} |
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
