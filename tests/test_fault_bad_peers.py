"""Fault injection: peers that misbehave at the SSH level.

A peer that accepts TCP and never answers, one that answers twice as slowly as the ping
timeout, one that sends random bytes, one with a bogus SSH banner, and (for contrast) a
closed port and a good peer. The Pinger runs in-process for a bounded number of rounds and
its results go through the Reconciler: each peer must reach its README status (TCP answers
but SSH fails -> unresponsive; nothing answers -> offline) within a bounded time and stay
there, and stopping the Pinger must leave no asyncio task and no file descriptor behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sshpeers import SshFleet

from clawd.config.sections import PingSettings, SshSettings
from clawd.core.model import Instance, PeerStatus
from clawd.core.observations import Observation, PeerConfigured, PingResult
from clawd.decide.reconciler import Reconciler
from clawd.decide.suspicion import DetectorSettings
from clawd.decide.view import FleetView, Thresholds
from clawd.sources.ping_peer import PingTarget
from clawd.sources.pinger import Pinger

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_blocking")]

INTERVAL = 0.4  # above the ping timeout, as clawd requires
TIMEOUT = 0.3  # ping timeout; the slow peer echoes after 2x this
CONNECT_TIMEOUT = 0.5
MISSED = 3
ROUNDS = 12  # every peer gets at least this many reported attempts
# Misses to a decision plus one connect timeout and backoff, with generous slack.
STATUS_WITHIN = MISSED * (INTERVAL + TIMEOUT + CONNECT_TIMEOUT) + 3.0
RUN_LIMIT = 30.0
FD_SLACK = 2  # e.g. an epoll/selector fd that the loop keeps

ME = Instance(gateway_id="gw-self", name="self", lead_number=1)


class GarbageServer:
    """Accepts TCP and writes `prefix` then random bytes; never speaks SSH."""

    def __init__(self, address: str, prefix: bytes, seed: int) -> None:
        self.address = address
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            writer.write(self.prefix + self.rng.randbytes(2048))
            await writer.drain()
            await reader.read(65536)  # until the client gives up
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def __aenter__(self) -> GarbageServer:
        self._server = await asyncio.start_server(self._serve, self.address, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()


def closed_port(address: str) -> int:
    """A port on `address` that refuses connections."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


SERVER_SIDE = "07007F:"  # a local address 127.0.7.x in /proc/net/tcp: our test servers' end


def client_fds() -> dict[str, str]:
    """This process's fds except the test servers' ends of connections: fd -> what it is."""
    return {fd: what for fd, what in fd_table().items() if SERVER_SIDE not in what.split("->")[0]}


def fd_table() -> dict[str, str]:
    """fd -> what it is (sockets with their TCP addresses)."""
    sockets: dict[str, str] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        sockets[fields[9]] = f"{fields[1]}->{fields[2]} st={fields[3]}"
    table: dict[str, str] = {}
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            inode = target.removeprefix("socket:[").removesuffix("]")
            table[fd.name] = sockets.get(inode, target)
    return table


class Watch:
    """Feeds every PingResult through the Reconciler; records when statuses change."""

    def __init__(self, peers: dict[str, PingTarget]) -> None:
        self.reconciler = Reconciler(
            Thresholds(
                detector=DetectorSettings(kind="threshold", offline_after_missed=MISSED),
                mdns_grace_misses=MISSED,
            )
        )
        self.view = FleetView(me=ME)
        self.started = time.monotonic()
        for gid, t in peers.items():
            inst = Instance(gateway_id=gid, name=gid, ip=t.host, ssh_port=t.port, lead_number=50)
            self._apply(PeerConfigured(inst, datetime.now(UTC)))
        self.results: dict[str, list[PingResult]] = {gid: [] for gid in peers}
        # gateway -> [(seconds since start, status after each attempt)]
        self.timeline: dict[str, list[tuple[float, PeerStatus]]] = {gid: [] for gid in peers}

    def _apply(self, obs: Observation) -> None:
        self.view = self.reconciler.apply(self.view, obs, datetime.now(UTC)).view

    def __call__(self, obs: Observation) -> None:
        assert isinstance(obs, PingResult)
        self._apply(obs)
        self.results[obs.gateway_id].append(obs)
        status = self.view.peers[obs.gateway_id].state.status
        self.timeline[obs.gateway_id].append((time.monotonic() - self.started, status))

    def settled_at(self, gid: str, status: PeerStatus) -> float | None:
        """When `gid` reached `status` for good (None if it is not there now)."""
        timeline = self.timeline[gid]
        if not timeline or timeline[-1][1] is not status:
            return None
        when = timeline[-1][0]
        for t, s in reversed(timeline):
            if s is not status:
                break
            when = t
        return when


@contextlib.asynccontextmanager
async def bad_fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, PingTarget]]]:
    async with (
        SshFleet(tmp_path) as fleet,
        GarbageServer("127.0.7.4", b"", seed=4) as garbage,
        GarbageServer("127.0.7.5", b"SSH-2.0-\x00\xff bogus\r\n", seed=5) as bogus,
    ):
        silent = await fleet.add_silent_peer("127.0.7.2")
        slow = await fleet.add_peer("127.0.7.3")
        slow.echo_delay = 2 * TIMEOUT
        good = await fleet.add_peer("127.0.7.6")
        targets = {
            "silent": PingTarget("silent", silent.address, silent.port, "claw"),
            "slow": PingTarget("slow", slow.address, slow.port, "claw"),
            "garbage": PingTarget("garbage", garbage.address, garbage.port, "claw"),
            "bogus-banner": PingTarget("bogus-banner", bogus.address, bogus.port, "claw"),
            "refused": PingTarget("refused", "127.0.7.7", closed_port("127.0.7.7"), "claw"),
            "good": PingTarget("good", good.address, good.port, "claw"),
        }
        yield fleet, targets


EXPECTED = {
    "silent": PeerStatus.UNRESPONSIVE,
    "slow": PeerStatus.UNRESPONSIVE,
    "garbage": PeerStatus.UNRESPONSIVE,
    "bogus-banner": PeerStatus.UNRESPONSIVE,
    "refused": PeerStatus.OFFLINE,
    "good": PeerStatus.ONLINE,
}


async def test_bad_peers_get_a_status_in_bounded_time_and_leak_nothing(tmp_path: Path) -> None:
    async with bad_fleet(tmp_path) as (fleet, targets):
        gc.collect()
        tasks_before = len(asyncio.all_tasks())
        fds_before = client_fds()

        watch = Watch(targets)
        pinger = Pinger(
            PingSettings(
                interval_seconds=INTERVAL,
                timeout_seconds=TIMEOUT,
                jitter_fraction=0.1,
                offline_after_missed=MISSED,
            ),
            SshSettings(
                host_key_policy="accept-new",
                client_keys=(str(fleet.client_key.path),),
                connect_timeout_seconds=CONNECT_TIMEOUT,
                install_check_every_rounds=100,
                install_check_command=fleet.install_check_command,
                reconnect_initial_seconds=0.05,
                reconnect_max_seconds=0.4,
            ),
            tmp_path / "home",
            watch,
        )
        (tmp_path / "home").mkdir()
        pinger.set_targets(targets)
        ready = asyncio.Event()
        task = asyncio.create_task(pinger.run(ready))
        peak_tasks = 0
        try:
            async with asyncio.timeout(5):
                await ready.wait()
            deadline = time.monotonic() + RUN_LIMIT
            while min(len(r) for r in watch.results.values()) < ROUNDS:
                peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
                assert time.monotonic() < deadline, {g: len(r) for g, r in watch.results.items()}
                await asyncio.sleep(0.05)
        finally:
            pinger.stop()
            async with asyncio.timeout(5):
                await task

        # Each peer's status, reached within the bound and kept until the end.
        for gid, status in EXPECTED.items():
            got = watch.view.peers[gid].state.status
            errors = {r.error for r in watch.results[gid]}
            assert got is status, f"{gid}: {got} (expected {status}); errors {errors}"
            settled = watch.settled_at(gid, status)
            assert settled is not None and settled <= STATUS_WITHIN, (
                f"{gid}: {status} only after {settled} s: {watch.timeline[gid]}"
            )
        assert all(r.success for r in watch.results["good"])
        for gid in EXPECTED.keys() - {"good"}:
            assert not any(r.success for r in watch.results[gid]), gid
        # The slow peer's echo was seen through, never mistaken for success.
        assert fleet.peers["127.0.7.3"].authenticated >= 1

        # Nothing left behind: tasks of the pinger are gone, connections closed.
        # (The slow server's own echo task may hold a byte for up to 2x the timeout.)
        settle = time.monotonic() + 2 * TIMEOUT + 1.0
        while len(asyncio.all_tasks()) > tasks_before and time.monotonic() < settle:
            await asyncio.sleep(0.05)
        gc.collect()
        tasks_after = len(asyncio.all_tasks())
        fds_after = client_fds()
        assert tasks_after <= tasks_before, (tasks_before, tasks_after, asyncio.all_tasks())
        new_fds = {fd: what for fd, what in fds_after.items() if fds_before.get(fd) != what}
        assert len(fds_after) <= len(fds_before) + FD_SLACK, new_fds
        # One round task per peer plus at most one connect task each, and a few transients.
        assert peak_tasks <= tasks_before + 2 * len(targets) + 4, peak_tasks
