"""A partition in network namespaces: the monitor is cut off from half the fleet.

Six OpenSSH peers and clawd, each in a namespace of its own on one bridge (see
test_fleet_netns.py). Blackhole routes in the monitor's namespace cut it off from p1..p3
while the peers still reach each other: one `partition` incident, p1..p3 `unknown`, the
other peers' indirect probes (direct-tcpip channels through p4..p6) reach them, and no
`offline` storm. Routes deleted: one `partition_end`, p1..p3 online, no `recovery` storm.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess
from netns import Lab, Node
from sshpeers import sshd_path
from test_fleet_netns import Peer, _status, namespace_fleet

INTERVAL = 0.5
PEERS = ("p1", "p2", "p3", "p4", "p5", "p6")
CUT = PEERS[:3]
USER = "clawpart{}"  # not test_fleet_netns' logins: both tests may run at once

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
]


@pytest.fixture
async def fleet(lab: Lab, tmp_path: Path) -> AsyncIterator[tuple[dict[str, Peer], str, Path]]:
    async with namespace_fleet(lab, tmp_path, PEERS, user=USER, gateway="part-{}") as made:
        yield made


def _cut(monitor: Node, peers: list[Peer], action: str) -> None:
    """Blackhole routes to `peers` in the monitor's namespace, all in one `ip -batch`."""
    batch = "".join(f"route {action} blackhole {p.node.ip}/32\n" for p in peers)
    command = ["ip", "-n", monitor.namespace, "-batch", "-"]
    subprocess.run(command, input=batch, text=True, check=True, capture_output=True, timeout=10)


def _rows(home: Path) -> list[dict[str, Any]]:
    path = home / "incidents.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _until(what: str, check: Any, timeout: float, daemon: DaemonProcess) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        daemon.read()
        assert daemon.proc.poll() is None, f"clawd exited:\n{daemon.log}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {what} within {timeout}s: {_rows(daemon.home)}\n{daemon.log}")


async def test_partition_in_namespaces(
    lab: Lab, fleet: tuple[dict[str, Peer], str, Path], tmp_path: Path
) -> None:
    peers, stype, client_key = fleet
    monitor = lab.add("mon")
    home = tmp_path / "home"
    (home / "scripts").mkdir(parents=True)
    (home / "scripts" / "install.sh").write_text("#!/bin/sh\n")
    config = {
        "instance": {"gatewayId": "part-mon", "name": "monitor", "leadNumber": 1, "ip": monitor.ip},
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.4, "mdnsGraceMisses": 4},
        "ssh": {
            "hostKeyPolicy": "accept-new",
            "clientKeys": [str(client_key)],
            "connectTimeoutSeconds": 1,
            "installCheckEveryRounds": 2,
            "reconnectInitialSeconds": 0.3,
            "reconnectMaxSeconds": 1,
        },
        "detection": {"indirectProbes": 3, "probeTimeoutSeconds": 2},
        "discovery": {"enabled": True, "serviceType": stype, "interfaces": [monitor.ip]},
        "recovery": {"enabled": False},
        "skills": {"syncInterval": "off"},
    }
    (home / "config.json").write_text(json.dumps(config))
    cut = [peers[r] for r in CUT]
    cut_ids = {p.gateway_id for p in cut}
    daemon = DaemonProcess(home, prefix=monitor.prefix)
    try:
        await daemon.await_log("event=ready")
        for peer in peers.values():
            await daemon.wait_incident(peer.gateway_id, "online", 20)
        await asyncio.sleep(8 * INTERVAL)  # a heartbeat history for the failure detector
        before = len(_rows(home))
        log_before = len(daemon.log)

        _cut(monitor, cut, "add")
        took_cut = await _until(
            "one partition",
            lambda: any(r["eventType"] == "partition" for r in _rows(home)[before:]),
            15,
            daemon,
        )
        # Probes started on the first misses may still be answering: wait for them.
        await _until(
            "probed",
            lambda: re.search(r"indirect_probe.*\breachable_by=[1-9]", daemon.log[log_before:]),
            10,
            daemon,
        )
        await asyncio.sleep(4 * INTERVAL)  # more rounds: no late offline verdicts
        statuses = {p.gateway_id: _status(home, p.gateway_id) for p in cut}
        assert set(statuses.values()) == {"unknown"}, statuses
        assert all(_status(home, p.gateway_id) == "online" for p in peers.values() if p not in cut)
        log_cut = len(daemon.log)
        during = _rows(home)[before:]

        _cut(monitor, cut, "del")
        took_heal = await _until(
            "healed",
            lambda: (
                all(_status(home, g) == "online" for g in cut_ids)
                and any(r["eventType"] == "partition_end" for r in _rows(home)[before:])
            ),
            15,
            daemon,
        )
        await asyncio.sleep(4 * INTERVAL)  # late stragglers would show up now
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    assert "Traceback" not in daemon.log
    rows = _rows(home)[before:]
    print(f"\ncut -> partition {took_cut:.1f}s, heal -> online {took_heal:.1f}s")
    for row in rows:
        print(row["eventType"], row["gatewayId"], json.dumps(row.get("details")))

    partitions = [r for r in rows if r["eventType"] == "partition"]
    assert len(partitions) == 1, rows
    assert partitions[0]["gatewayId"] == "part-mon"
    assert partitions[0]["details"]["peers"] == 3
    assert sorted(partitions[0]["details"]["names"]) == sorted(cut_ids)
    assert [r for r in during if r["eventType"] == "partition"] == partitions
    ends = [r for r in rows if r["eventType"] == "partition_end"]
    assert len(ends) == 1, rows
    assert ends[0]["details"]["back"] >= 1
    assert ends[0]["details"]["reachable_via_peers"] >= 1, ends[0]
    # No up/down incident at all for the cut peers: no offline storm, no recovery storm.
    mine = [r for r in rows if r["gatewayId"] in cut_ids]
    assert [r for r in mine if r["eventType"] != "unreachable"] == [], mine
    # Tolerated: a straggler whose reconnect backoff outlasts the partition_end fails one
    # more ping (the stale connect error), is judged alone and gets one `unreachable`.
    stragglers = [r["gatewayId"] for r in mine]
    assert len(stragglers) == len(set(stragglers)), mine
    assert [r for r in rows if r["gatewayId"] not in cut_ids | {"part-mon"}] == [], rows
    # p4..p6 reached the cut peers through direct-tcpip channels on the monitor's SSH
    # connections to them (nothing installed on them for it).
    probes = re.findall(r".*indirect_probe.*", daemon.log[log_before:log_cut])
    reached = {
        m.group(1)
        for line in probes
        if (m := re.search(r"target=(\S+).*\breachable_by=[1-9]", line))
    }
    assert reached and reached <= cut_ids, probes
    print("\n".join(probes))
