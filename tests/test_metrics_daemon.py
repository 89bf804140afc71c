"""The metrics endpoint of a running `clawd run`, scraped the way Prometheus does."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemonproc import DaemonProcess
from helpers_pg import free_port
from prometheus_client.parser import text_string_to_metric_families
from sshpeers import SshFleet

INTERVAL = 0.3


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, **labels: str
) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


async def test_metrics_follow_the_fleet_and_a_reload(tmp_path: Path, fleet: SshFleet) -> None:
    peers = {
        gid: await fleet.add_peer(f"127.0.6.{n + 2}") for n, gid in enumerate(("gw-b", "gw-c"))
    }
    (fleet.directory / "known_hosts").write_text(fleet.known_hosts_text())
    port, second_port = free_port(), free_port()
    home = tmp_path / "home"
    home.mkdir()
    config = {
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 1},
        "peers": [
            {
                "name": f"name-{gid}",
                "gatewayId": gid,
                "ip": p.address,
                "sshPort": p.port,
                "leadNumber": 5,
            }
            for gid, p in peers.items()
        ],
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25, "offlineAfterMissed": 2},
        "ssh": {
            "knownHosts": str(fleet.directory / "known_hosts"),
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 0.5,
        },
        "discovery": {"enabled": False},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }
    (home / "config.json").write_text(json.dumps(config))
    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=metrics_listening")
        for gid in peers:
            await daemon.wait_incident(gid, "online", 10)
        await asyncio.sleep(INTERVAL * 3)
        m = await asyncio.to_thread(scrape, port)
        assert value(m, "clawd_peer_up", gateway="gw-b", name="name-gw-b") == 1
        assert value(m, "clawd_peers", status="online") == 2
        assert value(m, "clawd_is_leader") == 1
        assert (value(m, "clawd_incidents_total", type="online") or 0) == 2
        ok = value(m, "clawd_pings_total", result="ok") or 0
        assert ok >= 4
        assert value(m, "clawd_ping_duration_seconds_count") == ok

        await peers["gw-c"].stop()
        await daemon.wait_incident("gw-c", "offline", 10)
        m = await asyncio.to_thread(scrape, port)
        assert value(m, "clawd_peer_up", gateway="gw-c", name="name-gw-c") == 0
        assert (
            value(m, "clawd_peer_status", gateway="gw-c", name="name-gw-c", status="offline") == 1
        )
        assert value(m, "clawd_incidents_total", type="offline") == 1
        assert (value(m, "clawd_pings_total", result="failed") or 0) >= 2

        # A reload moves the endpoint without a restart.
        config["metrics"] = {"listen": f"127.0.0.1:{second_port}"}
        (home / "config.json").write_text(json.dumps(config))
        await daemon.await_log(f"address=127.0.0.1:{second_port}", 10)
        m = await asyncio.to_thread(scrape, second_port)
        assert value(m, "clawd_incidents_total", type="offline") == 1
        with pytest.raises(OSError):
            await asyncio.to_thread(scrape, port)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    assert "Traceback" not in daemon.log


async def test_busy_metrics_port_is_a_clear_start_error(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    config = {"discovery": {"enabled": False}, "metrics": {"listen": f"127.0.0.1:{port}"}}
    (home / "config.json").write_text(json.dumps(config))
    daemon = DaemonProcess(home)
    try:
        code = await asyncio.to_thread(daemon.proc.wait, 30)
    finally:
        daemon.stop()
        blocker.close()
    assert code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port} (metrics.listen)" in daemon.log
    assert "Traceback" not in daemon.log
