"""The Prometheus endpoint: values over real HTTP, hostile labels, bad clients, the dashboard."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from clawd import __version__
from clawd.act.backup.results import BackupResult
from clawd.core.errors import ClawdError, MetricsServerError
from clawd.core.model import EventType, Incident, Instance, PeerState, PeerStatus
from clawd.core.observations import PingResult
from clawd.decide.view import FleetView, PeerRecord
from clawd.serve.metrics.adapter import DaemonSource, backup_state
from clawd.serve.metrics.registry import FleetMetrics
from clawd.serve.metrics.server import MetricsServer
from clawd.serve.metrics.source import BackupState, PostgresState

pytestmark = pytest.mark.usefixtures("no_blocking")

DASHBOARD = Path(__file__).parent.parent / "contrib" / "grafana" / "clawd-dashboard.json"
HOSTILE = 'evil "name" \\ with\nnewline and {braces}=,'
BACKUP_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# Generous: the server's timeouts below are 0.3 s, a CI runner may be slow.
DROP_BOUND = 5.0


def peer(gid: str, name: str, status: PeerStatus, missed: int, lead: int) -> PeerRecord:
    return PeerRecord(
        Instance(gid, name, lead_number=lead),
        PeerState(gid, status=status, missed_pings=missed),
        phi=2.5 * missed,
    )


def three_peers() -> FleetView:
    peers = [
        peer("gw-a", "alpha", PeerStatus.ONLINE, 0, 0),
        peer("gw-b", "bravo", PeerStatus.OFFLINE, 5, 2),
        peer("gw-c", "charlie", PeerStatus.UNRESPONSIVE, 2, 3),
    ]
    me = Instance("gw-me", "myself", lead_number=1)
    return FleetView(me, {p.instance.gateway_id: p for p in peers}, leader="gw-a")


@dataclass
class FakeSource:
    view: FleetView = field(default_factory=three_peers)
    backup: BackupState = field(
        default_factory=lambda: BackupState(
            last_success=BACKUP_AT, last_size_bytes=123_456, last_duration_s=2.5, last_failed=True
        )
    )
    postgres: PostgresState | None = field(
        default_factory=lambda: PostgresState(connected=False, spool_bytes=4096)
    )
    lag: dict[str, float] = field(default_factory=lambda: {"p50": 0.5, "p99": 12.0, "max": 40.0})
    broken: bool = False

    def fleet_view(self) -> FleetView:
        if self.broken:
            raise RuntimeError("source broke")
        return self.view

    def backup_state(self) -> BackupState:
        return self.backup

    def postgres_state(self) -> PostgresState | None:
        return self.postgres

    def loop_lag_ms(self) -> Mapping[str, float]:
        return self.lag


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


Families = dict[str, list[Sample]]


@asynccontextmanager
async def run_server(metrics: FleetMetrics, **options: Any) -> AsyncIterator[MetricsServer]:
    server = MetricsServer(("127.0.0.1", 0), metrics, **options)
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises the start-up error
    try:
        yield server
    finally:
        server.stop()
        async with asyncio.timeout(5):
            await task


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def metrics(source: FakeSource) -> FleetMetrics:
    return FleetMetrics(source)


async def exchange(port: int, raw: bytes) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split(" ")[1]), headers, body)


async def get(port: int, path: str = "/metrics", method: str = "GET") -> Reply:
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def scrape(port: int) -> Families:
    reply = await get(port)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    assert int(reply.headers["content-length"]) == len(reply.body)
    return parse(reply.body)


def parse(body: bytes) -> Families:
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def value(families: Families, family: str, sample: str | None = None, **labels: str) -> float:
    found = [
        s.value
        for s in families[family]
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family, sample, labels, found)
    return found[0]


# -- values ------------------------------------------------------------------


async def test_scrape_exports_the_fleet_backup_postgres_and_lag(metrics: FleetMetrics) -> None:
    async with run_server(metrics) as server:
        fams = await scrape(server.port)

    def up(gid: str, name: str) -> float:
        return value(fams, "clawd_peer_up", gateway=gid, name=name)

    assert (up("gw-a", "alpha"), up("gw-b", "bravo"), up("gw-c", "charlie")) == (1, 0, 0)
    for gid, name, current in (
        ("gw-a", "alpha", "online"),
        ("gw-b", "bravo", "offline"),
        ("gw-c", "charlie", "unresponsive"),
    ):
        for status in ("online", "offline", "unresponsive", "unknown"):
            got = value(fams, "clawd_peer_status", gateway=gid, name=name, status=status)
            assert got == (1 if status == current else 0), (gid, status)
    assert value(fams, "clawd_peer_missed_pings", gateway="gw-b", name="bravo") == 5
    assert value(fams, "clawd_peer_missed_pings", gateway="gw-c", name="charlie") == 2
    assert value(fams, "clawd_peer_phi", gateway="gw-b", name="bravo") == 12.5
    assert value(fams, "clawd_peer_phi", gateway="gw-a", name="alpha") == 0
    assert {s.labels["status"]: s.value for s in fams["clawd_peers"]} == {
        "online": 1,
        "offline": 1,
        "unresponsive": 1,
        "unknown": 0,
    }
    leaders = {s.labels["gateway"]: s.value for s in fams["clawd_leader"]}
    assert leaders == {"gw-me": 0, "gw-a": 1, "gw-b": 0, "gw-c": 0}
    assert value(fams, "clawd_is_leader") == 0
    stamp = value(fams, "clawd_backup_last_success_timestamp_seconds")
    assert stamp == BACKUP_AT.timestamp()
    assert value(fams, "clawd_backup_last_size_bytes") == 123_456
    assert value(fams, "clawd_backup_last_duration_seconds") == 2.5
    assert value(fams, "clawd_backup_last_failed") == 1
    assert value(fams, "clawd_backup_running") == 0
    assert value(fams, "clawd_postgres_connected") == 0
    assert value(fams, "clawd_spool_bytes") == 4096
    lag = {s.labels["quantile"]: s.value for s in fams["clawd_event_loop_lag_seconds"]}
    assert lag == {"0.5": 0.0005, "0.99": 0.012, "1": 0.04}
    assert value(fams, "clawd_build_info", version=__version__) == 1


async def test_unknown_values_are_left_out_not_zero(source: FakeSource) -> None:
    source.backup = BackupState()
    source.postgres = None
    source.view = FleetView(Instance("gw-me", "myself", lead_number=0), {}, leader="gw-me")
    fams = parse(FleetMetrics(source).exposition())
    for absent in (
        "clawd_backup_last_success_timestamp_seconds",
        "clawd_backup_last_size_bytes",
        "clawd_backup_last_duration_seconds",
        "clawd_postgres_connected",
        "clawd_spool_bytes",
    ):
        assert absent not in fams
    assert value(fams, "clawd_backup_last_failed") == 0
    assert value(fams, "clawd_is_leader") == 1
    assert fams["clawd_peer_up"] == []
    assert sum(s.value for s in fams["clawd_peers"]) == 0


async def test_gauges_follow_the_source_between_scrapes(
    metrics: FleetMetrics, source: FakeSource
) -> None:
    async with run_server(metrics) as server:
        before = await scrape(server.port)
        gone = dict(source.view.peers)
        del gone["gw-b"]
        source.view = FleetView(source.view.me, gone, leader="gw-me")
        after = await scrape(server.port)
    assert len(before["clawd_peer_up"]) == 3
    assert {s.labels["gateway"] for s in after["clawd_peer_up"]} == {"gw-a", "gw-c"}
    assert value(after, "clawd_is_leader") == 1


def ping(ok: bool, ms: int | None) -> PingResult:
    return PingResult("gw-a", datetime.now(UTC), ok, response_ms=ms)


async def test_ping_histogram_and_counters(metrics: FleetMetrics) -> None:
    for result in (
        ping(True, 1),
        ping(True, 3),
        ping(True, 40),
        ping(True, None),
        ping(False, None),
    ):
        metrics.observe_ping(result)
    metrics.observe_ping(ping(False, None))
    async with run_server(metrics) as server:
        fams = await scrape(server.port)
    name = "clawd_ping_duration_seconds"

    def bucket(le: str) -> float:
        return value(fams, name, f"{name}_bucket", le=le)

    assert bucket("0.0005") == 0
    assert bucket("0.001") == 1
    assert bucket("0.005") == 2
    assert bucket("0.025") == 2
    assert bucket("0.05") == 3
    assert bucket("5.0") == 3
    assert bucket("+Inf") == 3
    assert value(fams, name, f"{name}_count") == 3
    assert value(fams, name, f"{name}_sum") == pytest.approx(0.044)
    assert value(fams, "clawd_pings", "clawd_pings_total", result="ok") == 4
    assert value(fams, "clawd_pings", "clawd_pings_total", result="failed") == 2


async def test_incidents_exist_for_every_type_from_the_start(metrics: FleetMetrics) -> None:
    async with run_server(metrics) as server:
        before = await scrape(server.port)
        metrics.count_incident(Incident("gw-b", EventType.OFFLINE))
        metrics.count_incident(Incident("gw-c", EventType.OFFLINE))
        metrics.count_incident(Incident("gw-a", EventType.LEADER_CHANGE))
        after = await scrape(server.port)

    def totals(fams: Families) -> dict[str, float]:
        samples = fams["clawd_incidents"]
        return {s.labels["type"]: s.value for s in samples if s.name == "clawd_incidents_total"}

    assert totals(before) == dict.fromkeys((t.value for t in EventType), 0.0)
    assert totals(after) == {**totals(before), "offline": 2, "leader_change": 1}


async def test_hostile_label_values_round_trip_exactly(source: FakeSource) -> None:
    hostile_gid = 'gw-"\\\n'
    source.view = FleetView(
        source.view.me,
        {hostile_gid: peer(hostile_gid, HOSTILE, PeerStatus.ONLINE, 7, 9)},
        leader=hostile_gid,
    )
    async with run_server(FleetMetrics(source, version='1.0"\n\\')) as server:
        fams = await scrape(server.port)
    assert [s.labels for s in fams["clawd_peer_up"]] == [{"gateway": hostile_gid, "name": HOSTILE}]
    assert value(fams, "clawd_peer_missed_pings", gateway=hostile_gid, name=HOSTILE) == 7
    assert value(fams, "clawd_leader", gateway=hostile_gid, name=HOSTILE) == 1
    assert value(fams, "clawd_build_info", version='1.0"\n\\') == 1


async def test_a_thousand_peers(source: FakeSource) -> None:
    statuses = list(PeerStatus)
    records = [
        peer(f"gw-{i:04d}", f"claw-{i}", statuses[i % 4], i % 5, i + 10) for i in range(1000)
    ]
    source.view = FleetView(source.view.me, {r.instance.gateway_id: r for r in records})
    async with run_server(FleetMetrics(source)) as server:
        fams = await scrape(server.port)
    assert len(fams["clawd_peer_up"]) == 1000
    assert len(fams["clawd_peer_status"]) == 4000
    assert {s.labels["status"]: s.value for s in fams["clawd_peers"]} == dict.fromkeys(
        (s.value for s in statuses), 250
    )


async def test_the_served_text_equals_prometheus_clients_own(source: FakeSource) -> None:
    """The fast per-peer renderer says exactly what generate_latest(registry) says."""
    records = [peer(f"gw-{i}", f"claw-{i}", list(PeerStatus)[i % 4], i, i) for i in range(50)]
    records.append(peer('gw-"\\\n', HOSTILE, PeerStatus.UNKNOWN, 1, 99))
    source.view = FleetView(source.view.me, {r.instance.gateway_id: r for r in records}, "gw-7")
    metrics = FleetMetrics(source)
    metrics.observe_ping(ping(True, 2))
    metrics.count_incident(Incident("gw-1", EventType.RECOVERY))
    async with run_server(metrics) as server:
        served = await scrape(server.port)
    reference = parse(generate_latest(metrics.registry))
    assert served == reference
    assert len(served["clawd_peer_status"]) == 51 * 4


# -- HTTP ------------------------------------------------------------------


async def test_other_paths_404_other_methods_405_head_has_no_body(metrics: FleetMetrics) -> None:
    async with run_server(metrics) as server:
        port = server.port
        assert (await get(port, "/")).status == 404
        assert (await get(port, "/metricsx")).status == 404
        assert (await get(port, "/metrics?name[]=clawd_peer_up")).status == 200
        post = await get(port, method="POST")
        assert post.status == 405
        assert {m.strip() for m in post.headers["allow"].split(",")} == {"GET", "HEAD"}
        assert (await get(port, method="DELETE")).status == 405
        head = await get(port, method="HEAD")
        full = await get(port)
        assert (head.status, head.body) == (200, b"")
        assert head.headers["content-length"] == full.headers["content-length"]
        assert full.headers["connection"] == "close"
        assert (await exchange(port, b"hello\r\n\r\n")).status == 400


async def test_a_real_http_client_scrapes(metrics: FleetMetrics) -> None:
    def fetch(url: str) -> tuple[int, str, bytes]:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()

    async with run_server(metrics) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        status, ctype, body = await asyncio.to_thread(fetch, url)
        with pytest.raises(urllib.error.HTTPError) as missing:
            await asyncio.to_thread(fetch, url.replace("/metrics", "/nope"))
    assert (status, ctype) == (200, CONTENT_TYPE_LATEST)
    assert "clawd_peer_up" in parse(body)
    missing.value.close()  # an HTTPError holds the response's socket open
    assert missing.value.code == 404


async def test_a_silent_client_is_dropped_and_the_server_still_answers(
    metrics: FleetMetrics,
) -> None:
    async with run_server(metrics, head_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        async with asyncio.timeout(DROP_BOUND):
            assert await reader.read() == b""  # closed without an answer
        assert time.monotonic() - started < DROP_BOUND
        writer.close()
        await writer.wait_closed()
        # A client that stalls in the middle of its headers is dropped the same way.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        async with asyncio.timeout(DROP_BOUND):
            assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert "clawd_peer_up" in await scrape(server.port)


@pytest.mark.parametrize("line", [b"x" * 1024, b"GET /metrics HTTP/1.1\r\nX: y\r\n"])
async def test_a_megabyte_of_garbage_is_refused_and_the_server_still_answers(
    metrics: FleetMetrics, line: bytes
) -> None:
    garbage = line * (1024 * 1024 // len(line) + 1)
    async with run_server(metrics, head_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        try:
            writer.write(garbage)
            async with asyncio.timeout(DROP_BOUND):
                await writer.drain()
                answer = await reader.read()
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
        assert time.monotonic() - started < DROP_BOUND
        assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]  # an answer, not a reset
        assert "clawd_peer_up" in await scrape(server.port)


async def test_stop_closes_open_connections(metrics: FleetMetrics) -> None:
    async with run_server(metrics, head_timeout=60) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
    async with asyncio.timeout(DROP_BOUND):
        assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_a_failing_source_answers_500_and_the_server_survives(
    metrics: FleetMetrics, source: FakeSource
) -> None:
    async with run_server(metrics) as server:
        source.broken = True
        assert (await get(server.port)).status == 500
        source.broken = False
        assert "clawd_peer_up" in await scrape(server.port)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_port_in_use_is_a_clear_error(metrics: FleetMetrics, taken_port: int) -> None:
    server = MetricsServer(("127.0.0.1", taken_port), metrics)
    with pytest.raises(MetricsServerError) as caught:
        await server.run(asyncio.Event())
    message = str(caught.value)
    assert isinstance(caught.value, ClawdError)
    assert f"127.0.0.1:{taken_port}" in message
    assert "metrics.listen" in message
    assert "in use" in message
    assert "\n" not in message


async def test_an_address_not_on_this_host_is_a_clear_error(metrics: FleetMetrics) -> None:
    server = MetricsServer(("192.0.2.1", 9464), metrics)  # TEST-NET-1, never local
    with pytest.raises(MetricsServerError, match=r"192\.0\.2\.1:9464 \(metrics\.listen\): "):
        await server.run(asyncio.Event())


# -- the daemon's adapter ------------------------------------------------------


@dataclass
class FakeSink:
    connected: bool = True
    backlog_bytes: int = 0
    pending_rows: int = 0
    spool_failing: bool = False
    stalled: bool = False

    def waiting_seconds(self) -> float:
        return 0.0


@dataclass
class FakeLag:
    def percentiles_ms(self) -> dict[str, float]:
        return {"p50": 1.0, "p99": 2.0, "max": 3.0}


@dataclass
class FakeBackups:
    running: bool = False
    last_good: datetime | None = None
    last_good_result: BackupResult | None = None
    last_error: str | None = None


def test_daemon_source_reads_the_current_parts() -> None:
    views = [three_peers()]
    sinks: list[FakeSink | None] = [FakeSink(connected=False, backlog_bytes=77)]
    backups = FakeBackups(
        last_good=BACKUP_AT,
        last_good_result=BackupResult(ok=True, source="timer", duration_s=1.5),
        last_error="disk full",
    )
    source = DaemonSource(
        lambda: views[0], lambda: backup_state(backups), lambda: sinks[0], FakeLag()
    )
    assert source.fleet_view() is views[0]
    assert source.postgres_state() == PostgresState(connected=False, spool_bytes=77)
    assert source.loop_lag_ms() == {"p50": 1.0, "p99": 2.0, "max": 3.0}
    assert source.backup_state() == BackupState(
        last_success=BACKUP_AT, last_size_bytes=0, last_duration_s=1.5, last_failed=True
    )
    sinks[0] = None  # backend switched to JSON by a reload
    assert source.postgres_state() is None
    assert backup_state(FakeBackups()) == BackupState()


# -- the Grafana dashboard -----------------------------------------------------


def expressions(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("expr", "query", "definition") and isinstance(item, str):
                yield item
            elif isinstance(item, dict) and key == "query" and isinstance(item.get("query"), str):
                yield item["query"]
            else:
                yield from expressions(item)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def test_the_dashboard_uses_only_exported_metrics(metrics: FleetMetrics) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {m for expr in expressions(dashboard) for m in re.findall(r"clawd_[a-z_]+", expr)}
    assert len(used) >= 10, used
    metrics.observe_ping(ping(True, 1))
    exported = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        exported.add(family.name)
        exported.update(s.name for s in family.samples)
    unknown = {
        m
        for m in used
        if m not in exported and re.sub(r"_(bucket|sum|count)$", "", m) not in exported
    }
    assert not unknown, f"the dashboard queries metrics clawd does not export: {sorted(unknown)}"
    assert dashboard["schemaVersion"] >= 36
    assert any(i["name"] == "DS_PROMETHEUS" for i in dashboard["__inputs"])
    gateway = [v for v in dashboard["templating"]["list"] if v["name"] == "gateway"]
    assert gateway and "label_values(clawd_peer_up, gateway)" in json.dumps(gateway[0])
