"""The real daemon in the test's loop (tests/inprocess.py), against real asyncssh peers.

What the subprocess tests check by reading a log, checked here on the daemon's own parts:
the live view and the control socket's answer agree, a config edit reaches the pinger (and
a broken one does not), a stop with a ping in flight ends in time and leaves no task behind.
All of it under blockbuster (conftest: on for every async test).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from faulthelpers import three_peers
from inprocess import STOP_SECONDS, InProcessDaemons, RunningDaemon, peers_config
from sshpeers import SshFleet, SshPeer

import clawd
from clawd.core.model import PeerStatus

CLAWD_DIR = str(Path(clawd.__file__).parent)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    async with three_peers(tmp_path, "gw-i", 40) as fleet:
        yield fleet


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def all_online(daemon: RunningDaemon) -> bool:
    peers = daemon.view.peers
    return bool(peers) and all(r.state.status is PeerStatus.ONLINE for r in peers.values())


def clawd_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks running clawd's code (other than this test's own)."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        files = {frame.f_code.co_filename for frame in task.get_stack()}
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None:
            files.add(code.co_filename)
        if task.get_name().startswith("clawd") or any(f.startswith(CLAWD_DIR) for f in files):
            found.append(task)
    return found


async def test_live_view_and_status_answer_agree(
    inprocess_daemons: InProcessDaemons, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    ssh_fleet, peers = fleet
    daemon = await inprocess_daemons.start(peers_config(ssh_fleet, peers))
    assert daemon.control_socket.is_socket()
    await until(lambda: all_online(daemon), 10, "every peer online in the live view")
    assert set(daemon.view.peers) == set(peers)

    answer = await daemon.request("status")
    assert answer["ok"] is True
    by_gateway = {row["gatewayId"]: row for row in answer["peers"]}
    assert set(by_gateway) == set(peers)
    for gid, peer in peers.items():
        row = by_gateway[gid]
        assert (row["status"], row["ip"], row["ssh"]) == ("online", peer.address, True), row
    assert answer["summary"].startswith("3 peers: 3 online"), answer["summary"]
    assert answer["leader"] == daemon.view.leader
    assert answer["pinger"]["connected"] == 3
    # The repository holds what the keeper decided: its snapshot has them online too.
    await until(
        lambda: all(s.status is PeerStatus.ONLINE for s in daemon.repo.snapshot().peers.values()),
        5,
        "every peer online in the repository's snapshot",
    )
    # One connection per peer, kept open between pings.
    assert all(len(peer.connections) == 1 for peer in peers.values())


async def _pings_in(daemon: RunningDaemon, seconds: float) -> int:
    pinger_counts = daemon.parts.status.pinger
    before = pinger_counts.pings_sent
    await asyncio.sleep(seconds)
    return pinger_counts.pings_sent - before


async def test_edit_reaches_the_pinger_and_a_broken_one_is_rejected(
    inprocess_daemons: InProcessDaemons, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    ssh_fleet, peers = fleet
    one = {"gw-i0": peers["gw-i0"]}
    config = peers_config(ssh_fleet, one, interval=0.3)
    daemon = await inprocess_daemons.start(config)
    await until(lambda: all_online(daemon), 10, "gw-i0 online")
    live = daemon.parts.live

    # Slower: the config watcher sees the edit, the pinger reschedules its peer.
    await daemon.write_config(config | {"ping": config["ping"] | {"intervalSeconds": 5.0}})
    await until(lambda: live.settings.ping.interval_seconds == 5.0, 5, "interval 5 s in force")
    assert await _pings_in(daemon, 1.5) <= 1  # at 0.3 s it would be ~5

    # Faster again, asked over the control socket (what `clawd reload` does).
    await daemon.write_config(config)
    answer = await daemon.request("reload")
    if answer["ok"] and not answer["changed"]:  # the watcher was first: same result
        assert live.settings.ping.interval_seconds == 0.3
    else:
        assert answer == {"ok": True, "changed": ["ping.intervalSeconds"], "error": None}
    assert await _pings_in(daemon, 1.5) >= 3

    # A broken edit: rejected, the running settings and document stay, pings go on.
    document = daemon.parts.reloader.in_force.document
    await daemon.write_config(config | {"backend": "mysql"})
    answer = await daemon.request("reload")
    assert answer["ok"] is False
    assert "backend: 'mysql' is not one of json, postgres" in answer["error"]
    assert live.settings.ping.interval_seconds == 0.3 and live.settings.backend == "json"
    assert daemon.parts.reloader.in_force.document is document
    assert await _pings_in(daemon, 1.5) >= 3
    assert all_online(daemon)


async def test_stop_with_a_ping_in_flight_ends_in_time_and_leaves_no_task(
    inprocess_daemons: InProcessDaemons, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    ssh_fleet, peers = fleet
    config = peers_config(ssh_fleet, peers, interval=0.3)
    config["ping"] |= {"intervalSeconds": 1.0, "timeoutSeconds": 0.9}
    daemon = await inprocess_daemons.start(config)
    await until(lambda: all_online(daemon), 10, "every peer online")
    slow = peers["gw-i1"]
    slow.echo_delay = 30.0  # its next echo is held far beyond the ping timeout
    await until(lambda: slow.echoes_pending > 0, 5, "a ping to gw-i1 in flight")

    started = time.monotonic()
    assert await daemon.stop(timeout=STOP_SECONDS) == 0
    took = time.monotonic() - started
    # The round in flight may finish (its timeout is 0.9 s), then everything closes.
    assert took < STOP_SECONDS, took
    assert clawd_tasks() == []
    assert not daemon.control_socket.exists()
    # Every SSH connection the daemon held is closed (the servers see it go).
    await until(
        lambda: all(not p.connections for p in peers.values()), 2, "the peers' connections closed"
    )
