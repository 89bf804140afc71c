"""Client CPU per SSH ping, side by side in one run against a real server on loopback.

The server is a private OpenSSH ``sshd`` (``tests/sshpeers.py``) logging in an unprivileged
user with ``/bin/sh``, listening on one loopback address per simulated peer; without sshd, an
asyncssh server in a separate process stands in. Only this (client) process's CPU is counted
(``time.process_time``, all threads), so the server's work never inflates a figure.

Client CPU seconds per 1,000 pings, back to back on one connection unless said otherwise:

* a fresh connection per ping (connect, authenticate, close);
* ``conn.run('true')`` on a persistent connection (an exec per ping);
* an SSH keepalive global request (``keepalive@openssh.com``) -- the reference floor; asyncssh
  has no public call for it, so this uses its private ``_make_global_request``;
* the same keepalives spread the way a scheduler sends pings (N connections, 100/s, each on
  its own wake-up): on these VMs waking an idle event loop costs more than the SSH packets,
  so this is the floor a ping *scheduler* can be held to;
* clawd's echo round trip (``clawd.sources.ssh_link.Link.round_trip``: one byte through a ``cat``
  channel);
* the daemon's pinger end to end: ``clawd.sources.pinger.Pinger`` over N peers at 100 pings/s
  (the rate of 1,000 peers at a 10 s interval; the full run's 200 peers at 2 s also have its
  100 ms tick), steady state after every peer is connected, install check every 10th round (the
  default); again without install checks, and again without the tick grid.

Run: ``.venv/bin/python -m bench.ssh_ping_cost [--quick] [--server asyncssh]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

import clawd.sources.ping_schedule
from clawd.config.sections import PingSettings, SshSettings
from clawd.core.logs import configure_logging
from clawd.core.observations import Observation
from clawd.sources.ping_peer import PingTarget
from clawd.sources.pinger import Pinger
from clawd.sources.ssh_client import Attempt, Connector

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from sshpeers import SSHD_MAX_ADDRESSES, OpenSshServer, make_client_key, sshd_path  # noqa: E402

SECTION = "ssh-ping-cost"
Row = tuple[str, str, str, str]

KEEPALIVE_FLOOR = "0.12–0.18"  # MACHINE-NOTES, client CPU s per 1,000 keepalives
GOAL_RATIO = 1.5  # the daemon's per-ping average within 1.5x of the keepalive figure
GOAL_CPU_PERCENT = 5.0  # of one core, for 1,000 peers at a 10 s interval
PINGS_PER_SECOND = 100.0  # 1,000 peers / 10 s


@dataclass(frozen=True)
class Plan:
    runs: int
    fresh: int  # fresh connections per run
    execs: int
    keepalives: int
    echoes: int
    peers: int
    window_s: float  # steady-state measurement window of the pinger

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(runs=1, fresh=10, execs=50, keepalives=300, echoes=500, peers=50, window_s=3)
        # 200 peers at 2 s: the same rate and tick (100 ms) as 1,000 peers at 10 s.
        return cls(
            runs=3, fresh=40, execs=300, keepalives=1500, echoes=2000, peers=200, window_s=10
        )


@dataclass(frozen=True)
class Server:
    """Where the peers listen: address -> port, the login user and the client key."""

    ports: dict[str, int]
    user: str
    key_path: Path
    kind: str

    @property
    def first(self) -> tuple[str, int]:
        address = next(iter(self.ports))
        return address, self.ports[address]


def peer_addresses(n: int) -> list[str]:
    return [f"127.0.{2 + i // 250}.{1 + i % 250}" for i in range(n)]


@contextlib.asynccontextmanager
async def start_server(directory: Path, n: int, kind: str) -> AsyncIterator[Server]:
    addresses = peer_addresses(n)
    if kind == "openssh":
        key = make_client_key(directory)
        ports: dict[str, int] = {}
        async with contextlib.AsyncExitStack() as stack:
            # One sshd listens on at most 16 addresses (its MAX_LISTEN_SOCKS).
            for i in range(0, n, SSHD_MAX_ADDRESSES):
                group = addresses[i : i + SSHD_MAX_ADDRESSES]
                group_dir = directory / f"sshd-{i // SSHD_MAX_ADDRESSES}"
                group_dir.mkdir()
                sshd = OpenSshServer(group_dir, group, [key.public_line])
                await stack.enter_async_context(sshd)
                ports.update(dict.fromkeys(group, sshd.port))
            yield Server(ports, sshd.user, key.path, "OpenSSH sshd")
        return
    # asyncssh server in its own process, so its CPU is not counted.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS_DIR / "sshpeers.py"),
        "serve",
        "--dir",
        str(directory),
        *addresses,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        ports = {a: int(p) for a, p in (item.rsplit(":", 1) for item in line.split())}
        yield Server(ports, "claw", directory / "id_ed25519", "asyncssh server (own process)")
    finally:
        process.terminate()
        await process.wait()


def ssh_settings(server: Server, **changes: Any) -> SshSettings:
    values: dict[str, Any] = {
        "host_key_policy": "accept-new",
        "client_keys": (str(server.key_path),),
        "connect_timeout_seconds": 20.0,
    }
    return SshSettings(**(values | changes))


# --------------------------------------------------------------------------- micro figures


async def cpu_per_1000(n: int, one: Callable[[], Awaitable[object]]) -> float:
    """Client CPU seconds per 1,000 calls of `one`, called `n` times in a row."""
    for _ in range(min(20, n)):  # warm up
        await one()
    gc.collect()
    start = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - start) * 1000.0 / n


async def fresh_connection(server: Server, n: int) -> float:
    address, port = server.first
    key = await asyncio.to_thread(asyncssh.read_private_key, server.key_path)

    async def one() -> None:
        conn = await asyncssh.connect(
            address,
            port,
            username=server.user,
            client_keys=[key],
            known_hosts=None,
            config=None,
            gss_host=None,
        )
        conn.close()
        await conn.wait_closed()

    return await cpu_per_1000(n, one)


async def persistent(server: Server, home: Path, plan: Plan) -> tuple[float, float, float]:
    """(exec `true`, keepalive, echo) CPU per 1,000 on one persistent connection each."""
    address, port = server.first
    connector = Connector(ssh_settings(server), home)
    link = await connector.connect(address, port, server.user, Attempt())
    try:
        conn = link.conn

        async def run_true() -> None:
            await conn.run("true", check=True)

        async def keepalive() -> None:
            await conn._make_global_request(b"keepalive@openssh.com")  # private: no public call

        async def echo() -> None:
            await link.round_trip(5.0)

        return (
            await cpu_per_1000(plan.execs, run_true),
            await cpu_per_1000(plan.keepalives, keepalive),
            await cpu_per_1000(plan.echoes, echo),
        )
    finally:
        link.close()
        await link.wait_closed()


async def spread_keepalives(server: Server, home: Path, plan: Plan) -> float:
    """Keepalives spread like pings (N connections, 100/s, one wake-up each): CPU s / 1,000."""
    addresses = list(server.ports)[: plan.peers]
    interval = len(addresses) / PINGS_PER_SECOND
    connector = Connector(ssh_settings(server), home)
    links = [await connector.connect(a, server.ports[a], server.user, Attempt()) for a in addresses]
    sent = 0
    stop = asyncio.Event()
    rng = random.Random(1)

    async def beat(conn: asyncssh.SSHClientConnection) -> None:
        nonlocal sent
        await asyncio.sleep(rng.uniform(0, interval))
        while not stop.is_set():
            await conn._make_global_request(b"keepalive@openssh.com")
            sent += 1
            await asyncio.sleep(interval * rng.uniform(0.9, 1.1))

    try:
        async with asyncio.TaskGroup() as tg:
            for link in links:
                tg.create_task(beat(link.conn))
            await asyncio.sleep(2 * interval)
            gc.collect()
            sent0, cpu0 = sent, time.process_time()
            await asyncio.sleep(plan.window_s)
            cpu, count = time.process_time() - cpu0, sent - sent0
            stop.set()
    finally:
        for link in links:
            link.close()
        for link in links:
            await link.wait_closed()
    return cpu * 1000.0 / max(1, count)


# --------------------------------------------------------------------------- the pinger


@dataclass(frozen=True)
class PingerSample:
    cpu_per_1000: float
    cpu_percent_at_target_rate: float
    pings: int
    failed: int
    connect_cpu_s: float  # connecting every peer (handshakes, host keys, first exec)
    lag_p99_ms: float


async def _lag_p99(seconds: float, interval: float = 0.010) -> float:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    end = loop.time() + seconds
    while loop.time() < end:
        before = loop.time()
        await asyncio.sleep(interval)
        lags.append(max(0.0, loop.time() - before - interval))
    lags.sort()
    return lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000.0


async def pinger_run(
    server: Server, home: Path, plan: Plan, check_every: int, batch_ticks: bool = True
) -> PingerSample:
    addresses = list(server.ports)[: plan.peers]
    interval = len(addresses) / PINGS_PER_SECOND
    emitted: list[Observation] = []
    # clawd's own default timeout (min(5 s, half the interval)): a timeout must be shorter
    # than the interval since issue 12; no ping times out here either way.
    timeout = min(5.0, interval / 2)
    ping = PingSettings(interval_seconds=interval, timeout_seconds=timeout, jitter_fraction=0.1)
    ssh = ssh_settings(server, install_check_command="true", install_check_every_rounds=check_every)
    pinger = Pinger(ping, ssh, home, emitted.append)
    saved_tick = clawd.sources.ping_schedule.TICK_MAX_SECONDS
    if not batch_ticks:  # every round on its own wake-up, to show what the ticks save
        clawd.sources.ping_schedule.TICK_MAX_SECONDS = 1e-6
    pinger.set_targets(
        {a: PingTarget(a, a, server.ports[a], server.user) for a in addresses},
    )
    ready = asyncio.Event()
    cpu0 = time.process_time()
    task = asyncio.create_task(pinger.run(ready))
    try:
        await ready.wait()
        async with asyncio.timeout(120):
            while pinger.connected < len(addresses) or pinger.pings_sent < len(addresses):
                await asyncio.sleep(0.05)
        connect_cpu = time.process_time() - cpu0
        await asyncio.sleep(2 * interval)  # every peer past its first (install-checked) round
        gc.collect()
        sent0, failed0, cpu1, t1 = (
            pinger.pings_sent,
            pinger.pings_failed,
            time.process_time(),
            time.monotonic(),
        )
        await asyncio.sleep(plan.window_s)
        cpu, wall = time.process_time() - cpu1, time.monotonic() - t1
        pings, failed = pinger.pings_sent - sent0, pinger.pings_failed - failed0
        lag = await _lag_p99(min(5.0, plan.window_s))
    finally:
        pinger.stop()
        await task
        clawd.sources.ping_schedule.TICK_MAX_SECONDS = saved_tick
    per_1000 = cpu * 1000.0 / max(1, pings)
    return PingerSample(
        cpu_per_1000=per_1000,
        cpu_percent_at_target_rate=100.0 * cpu / wall,
        pings=pings,
        failed=failed,
        connect_cpu_s=connect_cpu,
        lag_p99_ms=lag,
    )


# --------------------------------------------------------------------------- report


def span(values: Sequence[float], digits: int = 3) -> str:
    """min-median, like MACHINE-NOTES (one value for one run)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{min(values):.{digits}f}–{statistics.median(values):.{digits}f}"


def ratio(measured: float, goal: float, *, lower_is_better: bool = True) -> str:
    value = measured / goal
    ok = value <= 1.0 if lower_is_better else value >= 1.0
    return f"{value:.2f} {'✓' if ok else '✗'}"


async def _run(plan: Plan, kind: str) -> list[Row]:
    fresh: list[float] = []
    kind_label = kind
    execs: list[float] = []
    keepalives: list[float] = []
    spread: list[float] = []
    echoes: list[float] = []
    daemon: list[PingerSample] = []
    echo_only: list[PingerSample] = []
    no_ticks: list[PingerSample] = []
    with tempfile.TemporaryDirectory(prefix="clawd-bench-ssh-") as tmp:
        directory = Path(tmp)
        async with start_server(directory, plan.peers, kind) as server:
            kind_label = server.kind
            print(f"server: {server.kind}, {plan.peers} addresses", file=sys.stderr, flush=True)
            for run in range(plan.runs):
                home = directory / f"home-{run}"
                home.mkdir()
                fresh.append(await fresh_connection(server, plan.fresh))
                e, k, c = await persistent(server, home, plan)
                execs.append(e)
                keepalives.append(k)
                echoes.append(c)
                spread.append(await spread_keepalives(server, home, plan))
                daemon.append(await pinger_run(server, home, plan, check_every=10))
                echo_only.append(await pinger_run(server, home, plan, check_every=100_000))
                no_ticks.append(await pinger_run(server, home, plan, 10, batch_ticks=False))
                print(
                    f"run {run + 1}/{plan.runs}: fresh {fresh[-1]:.3f} exec {e:.3f} "
                    f"keepalive {k:.3f} (spread {spread[-1]:.3f}) echo {c:.3f} "
                    f"pinger {daemon[-1].cpu_per_1000:.3f} "
                    f"(echo only {echo_only[-1].cpu_per_1000:.3f}, "
                    f"no ticks {no_ticks[-1].cpu_per_1000:.3f}) CPU-s/1,000",
                    file=sys.stderr,
                    flush=True,
                )
    keep = statistics.median(keepalives)
    keep_spread = statistics.median(spread)
    daemon_cpu = statistics.median([x.cpu_per_1000 for x in daemon])
    echo_only_cpu = [x.cpu_per_1000 for x in echo_only]
    n = plan.peers
    rows: list[Row] = [
        (
            "server (client CPU only is counted)",
            "—",
            f"{kind_label} on {n} loopback addresses",
            "—",
        ),
        ("SSH ping, fresh connection each time, CPU s / 1,000", "— (3.3–6.4)", span(fresh), "—"),
        (
            "SSH exec `true`, persistent connection, CPU s / 1,000",
            "— (0.55–0.79)",
            span(execs),
            "—",
        ),
        (
            "SSH keepalive (private asyncssh call), back to back, CPU s / 1,000",
            f"— ({KEEPALIVE_FLOOR})",
            span(keepalives),
            "—",
        ),
        (
            f"SSH keepalive spread like pings ({n} connections, 100/s), CPU s / 1,000",
            "—",
            span(spread),
            "—",
        ),
        (
            "clawd echo round trip (`cat` channel), back to back, CPU s / 1,000",
            f"≤ {keep * GOAL_RATIO:.3f}",
            span(echoes),
            ratio(statistics.median(echoes), keep * GOAL_RATIO),
        ),
        (
            f"clawd Pinger, {n} peers at 100 pings/s, install check every 10 rounds, "
            "CPU s / 1,000 vs back-to-back keepalive",
            f"≤ {keep * GOAL_RATIO:.3f}",
            span([x.cpu_per_1000 for x in daemon]),
            ratio(daemon_cpu, keep * GOAL_RATIO),
        ),
        (
            "same, vs keepalives spread the same way",
            f"≤ {keep_spread * GOAL_RATIO:.3f}",
            span([x.cpu_per_1000 for x in daemon]),
            ratio(daemon_cpu, keep_spread * GOAL_RATIO),
        ),
        (
            "clawd Pinger without install checks, CPU s / 1,000 vs spread keepalive",
            f"≤ {keep_spread * GOAL_RATIO:.3f}",
            span(echo_only_cpu),
            ratio(statistics.median(echo_only_cpu), keep_spread * GOAL_RATIO),
        ),
        (
            "clawd Pinger with every round on its own wake-up (no tick grid), CPU s / 1,000",
            "—",
            span([x.cpu_per_1000 for x in no_ticks]),
            f"{statistics.median([x.cpu_per_1000 for x in no_ticks]) / daemon_cpu:.2f}× ticked",
        ),
        (
            "clawd Pinger at 100 pings/s (= 1,000 peers @ 10 s), CPU % of one core",
            f"≤ {GOAL_CPU_PERCENT:g}",
            span([x.cpu_percent_at_target_rate for x in daemon], 2),
            ratio(
                statistics.median([x.cpu_percent_at_target_rate for x in daemon]), GOAL_CPU_PERCENT
            ),
        ),
        (
            f"clawd Pinger: connecting {n} peers (handshakes + first install check), CPU s",
            "—",
            span([x.connect_cpu_s for x in daemon], 2),
            "—",
        ),
        (
            "clawd Pinger: event-loop lag p99, ms",
            "≤ 50",
            span([x.lag_p99_ms for x in daemon], 1),
            ratio(statistics.median([x.lag_p99_ms for x in daemon]), 50.0),
        ),
        (
            "clawd Pinger: pings measured / failed",
            "failed = 0",
            f"{sum(x.pings for x in daemon + echo_only + no_ticks):,} / "
            f"{sum(x.failed for x in daemon + echo_only + no_ticks)}",
            "✓" if not any(x.failed for x in daemon + echo_only + no_ticks) else "✗",
        ),
    ]
    return rows


def run(quick: bool = False, server: str | None = None) -> list[Row]:
    """Run the benchmark; rows of (figure, goal, measured, ratio)."""
    configure_logging("error", stream=sys.stderr)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    kind = server or ("openssh" if sshd_path() is not None else "asyncssh")
    return asyncio.run(_run(Plan.for_mode(quick), kind))


def render(rows: Sequence[Row], quick: bool = False) -> str:
    plan = Plan.for_mode(quick)
    head = (
        "## SSH ping cost (client CPU)\n\n"
        f"Machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"asyncssh {asyncssh.__version__}, {platform.system()} {platform.release()}. "
        f"{plan.runs} run(s); measured = min–median (one value for one run). "
        "Goals in parentheses are MACHINE-NOTES floors for comparison.\n\n"
        "| figure | goal | measured | ratio |\n|---|---|---|---|\n"
    )
    return head + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ssh_ping_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short run (under a minute)")
    parser.add_argument("--server", choices=["openssh", "asyncssh"], help="default: sshd if found")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, server=args.server)
    print(render(rows, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
