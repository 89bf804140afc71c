"""The ping scheduler against real SSH servers on loopback addresses (see ``sshpeers.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sshpeers import OpenSshServer, SshFleet, make_client_key, sshd_path

from clawd.config.sections import PingSettings, SshSettings
from clawd.config.settings import Settings
from clawd.core.observations import Observation, PingResult
from clawd.sources.ping_peer import PingTarget
from clawd.sources.pinger import Pinger

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_blocking")]

INTERVAL = 0.2
TIMEOUT = 0.15  # below the interval, as clawd requires


def ping_settings(**changes: Any) -> PingSettings:
    values: dict[str, Any] = {
        "interval_seconds": INTERVAL,
        "timeout_seconds": TIMEOUT,
        "jitter_fraction": 0.1,
    }
    return PingSettings(**(values | changes))


def ssh_settings(fleet: SshFleet, **changes: Any) -> SshSettings:
    values: dict[str, Any] = {
        "host_key_policy": "accept-new",
        "client_keys": (str(fleet.client_key.path),),
        "connect_timeout_seconds": 1.0,
        "max_concurrent_handshakes": 8,
        "install_check_every_rounds": 100,
        "install_check_command": fleet.install_check_command,
        "reconnect_initial_seconds": 0.05,
        "reconnect_max_seconds": 0.4,
    }
    return SshSettings(**(values | changes))


class Results:
    """Everything a Pinger emitted, per gateway, with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.all: list[tuple[float, PingResult]] = []
        self.took: dict[PingResult, float] = {}  # seconds from the attempt's `at` to its report

    def __call__(self, observation: Observation) -> None:
        assert isinstance(observation, PingResult)
        self.all.append((time.monotonic(), observation))
        self.took[observation] = time.time() - observation.at.timestamp()

    def of(self, gateway: str, since: float = 0.0) -> list[PingResult]:
        return [r for t, r in self.all if r.gateway_id == gateway and t >= since]

    def ok(self, gateway: str, since: float = 0.0) -> list[PingResult]:
        return [r for r in self.of(gateway, since) if r.success]

    def failed(self, gateway: str, since: float = 0.0) -> list[PingResult]:
        return [r for r in self.of(gateway, since) if not r.success]


async def eventually(condition: Callable[[], bool], seconds: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds}s: {what or condition}")
        await asyncio.sleep(0.02)


def target(gateway: str, host: str, port: int, user: str = "claw") -> PingTarget:
    return PingTarget(gateway, host, port, user)


def targets_for(fleet: SshFleet, addresses: Iterable[str]) -> dict[str, PingTarget]:
    return {a: target(a, a, fleet.peers[a].port) for a in addresses}


@contextlib.asynccontextmanager
async def running(pinger: Pinger) -> AsyncIterator[asyncio.Task[None]]:
    ready = asyncio.Event()
    task = asyncio.create_task(pinger.run(ready))
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        yield task
    finally:
        pinger.stop()
        async with asyncio.timeout(5):
            await task


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    async with SshFleet(tmp_path) as fleet:
        yield fleet


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


async def test_three_peers_succeed(fleet: SshFleet, home: Path) -> None:
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    for peer in await fleet.add_peers(addresses):
        peer.claim(peer.address)  # proven by its first check
    results = Results()
    pinger = Pinger(ping_settings(), ssh_settings(fleet), home, results)
    pinger.set_targets(targets_for(fleet, addresses))
    async with running(pinger):
        await eventually(lambda: all(len(results.of(a)) >= 4 for a in addresses))
    for address in addresses:
        got = results.of(address)
        assert all(r.success and r.error is None and r.tcp_reachable for r in got), got
        assert all(isinstance(r.response_ms, int) and 0 <= r.response_ms < 500 for r in got)
        assert got[0].installed is True  # checked right after connecting …
        assert all(r.installed is None for r in got[1:])  # … and not again for 100 rounds
        stamps = [r.at for r in got]
        assert all(s.utcoffset() == timedelta(0) for s in stamps)  # UTC
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
        assert all(INTERVAL * 0.75 <= gap <= INTERVAL * 1.6 for gap in gaps), gaps
    assert fleet.counters.authenticated == 3  # one persistent connection per peer
    assert fleet.counters.execs == {"cat": 3, fleet.identity_command: 3}
    assert pinger.pings_failed == 0 and pinger.connects == 3


async def test_stopped_peer_fails_then_reconnects(fleet: SshFleet, home: Path) -> None:
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    peers = await fleet.add_peers(addresses)
    results = Results()
    pinger = Pinger(ping_settings(), ssh_settings(fleet), home, results)
    pinger.set_targets(targets_for(fleet, addresses))
    async with running(pinger):
        await eventually(lambda: all(results.ok(a) for a in addresses))
        await peers[2].stop()
        down = time.monotonic()
        await eventually(lambda: len(results.failed("127.0.0.4", down)) >= 4)
        failures = results.failed("127.0.0.4", down)
        # The round that found the link gone reports why; the rounds after that are refused.
        assert all(r.tcp_reachable is False for r in failures[1:]), failures
        assert any(r.error == "connection refused" for r in failures), failures
        for other in addresses[:2]:
            assert results.of(other, down) and all(r.success for r in results.of(other, down))
        # A miss is reported every round while disconnected, not once per reconnect attempt
        # (reconnects back off to 0.4 s, rounds come every 0.2 s): at least half the rounds
        # that fit, so a late event loop on a busy machine cannot fail it.
        elapsed = time.monotonic() - down
        assert len(results.of("127.0.0.4", down)) >= int(elapsed / INTERVAL) // 2

        await peers[2].start()
        up = time.monotonic()
        await eventually(lambda: len(results.ok("127.0.0.4", up)) >= 2)
        assert results.ok("127.0.0.4", up)[0].installed is True  # re-checked after reconnecting
    assert pinger.connects == 4


async def test_silent_peer_times_out_with_tcp_reachable(fleet: SshFleet, home: Path) -> None:
    silent = await fleet.add_silent_peer("127.0.0.5")
    results = Results()
    # The handshake may take 5 s; a round still reports after the ping timeout.
    ssh = ssh_settings(fleet, connect_timeout_seconds=5.0)
    pinger = Pinger(ping_settings(), ssh, home, results)
    pinger.set_targets({"silent": target("silent", silent.address, silent.port)})
    async with running(pinger):
        await eventually(lambda: len(results.of("silent")) >= 3)
    got = results.of("silent")
    assert not any(r.success for r in got)
    # Reported after the ping timeout, not after the 5 s handshake limit (the margin is for
    # a busy machine's late loop).
    assert all(TIMEOUT - 0.05 <= results.took[r] <= TIMEOUT + 1.5 for r in got), results.took
    assert all(r.tcp_reachable is True for r in got), got
    assert all(r.error == f"SSH handshake unfinished after {TIMEOUT:g}s" for r in got), got
    assert silent.accepted == 1  # still the first handshake, not a reconnect storm


async def test_slow_echo_fails_within_timeout(fleet: SshFleet, home: Path) -> None:
    peer = await fleet.add_peer("127.0.0.6")
    peer.echo_delay = 6 * TIMEOUT  # far beyond the timeout, so a late loop cannot blur them
    results = Results()
    pinger = Pinger(ping_settings(), ssh_settings(fleet), home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.6"]))
    async with running(pinger):
        await eventually(lambda: len(results.of("127.0.0.6")) >= 2)
    got = results.of("127.0.0.6")
    assert not any(r.success for r in got)
    assert got[0].error == f"no echo within {TIMEOUT:g}s"
    assert TIMEOUT - 0.05 <= results.took[got[0]] <= TIMEOUT + 1.5  # not the 6x-timeout echo


async def test_install_check_false_and_every_n_rounds(fleet: SshFleet, home: Path) -> None:
    # Proven on its first check (its state.json names it), so checked every 3 rounds.
    (await fleet.add_peer("127.0.0.7", installed=False)).claim("127.0.0.7")
    results = Results()
    ssh = ssh_settings(fleet, install_check_every_rounds=3)
    pinger = Pinger(ping_settings(interval_seconds=0.1, timeout_seconds=0.08), ssh, home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.7"]))
    async with running(pinger):
        await eventually(lambda: len(results.of("127.0.0.7")) >= 8)
    got = results.of("127.0.0.7")[:8]
    assert all(r.success for r in got)
    assert [r.installed for r in got] == [False, None, None, False, None, None, False, None]
    # The exec rides next to the echo channel: never more than 2 channels on a connection.
    assert fleet.counters.peak_channels_per_connection <= 2
    assert got[0].proof is not None and got[0].proof.gateway_id == "127.0.0.7"


async def test_an_unproven_peer_is_asked_who_it_is_after_2_4_8_rounds(
    fleet: SshFleet, home: Path
) -> None:
    """A peer whose state.json names no gateway id (yet) is asked again after 2, 4, 8 …
    rounds; once it names itself it is asked only at the install check's own cadence."""
    peer = await fleet.add_peer("127.0.0.9")
    results = Results()
    ssh = ssh_settings(fleet, install_check_every_rounds=50)
    pinger = Pinger(ping_settings(interval_seconds=0.2, timeout_seconds=0.15), ssh, home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.9"]))

    def answered() -> list[PingResult]:
        return [r for r in results.of("127.0.0.9") if r.success]

    async with running(pinger):
        await eventually(lambda: len(answered()) >= 8)  # rounds 0, 2 and 6 asked
        peer.claim("127.0.0.9", 4)  # well before round 14
        await eventually(lambda: len(answered()) >= 26, seconds=30)
    got = answered()
    asked = [n for n, r in enumerate(got) if r.proof is not None]
    assert asked == [0, 2, 6, 14], asked
    proof = got[14].proof
    assert proof is not None and (proof.gateway_id, proof.lead_number) == ("127.0.0.9", 4)


async def test_auth_failure_reports_tcp_reachable(
    fleet: SshFleet, home: Path, tmp_path: Path
) -> None:
    await fleet.add_peer("127.0.0.8")
    stranger = make_client_key(tmp_path, "id_stranger")
    results = Results()
    ssh = ssh_settings(fleet, client_keys=(str(stranger.path),))
    pinger = Pinger(ping_settings(), ssh, home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.8"]))
    async with running(pinger):
        await eventually(lambda: len(results.of("127.0.0.8")) >= 2)
    got = results.of("127.0.0.8")
    assert all(not r.success and r.tcp_reachable is True for r in got)
    assert got[-1].error == "authentication failed"


def closed_port(address: str) -> int:
    """A port on `address` that refuses connections."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


async def test_refused_peer_backs_off_but_misses_every_round(fleet: SshFleet, home: Path) -> None:
    results = Results()
    ssh = ssh_settings(fleet, reconnect_initial_seconds=0.1, reconnect_max_seconds=0.8)
    pinger = Pinger(ping_settings(interval_seconds=0.1, timeout_seconds=0.08), ssh, home, results)
    pinger.set_targets({"gone": target("gone", "127.0.0.20", closed_port("127.0.0.20"))})
    async with running(pinger):
        started = time.monotonic()
        await asyncio.sleep(2.0)
        elapsed = time.monotonic() - started
    got = results.of("gone")
    # One miss per round (~every 0.1 s), not one per reconnect attempt (backing off
    # 0.1 → 0.8 s: about 6 in 2 s). Half the rounds that fit, for a busy machine.
    assert len(got) >= int(elapsed / 0.1) // 2, len(got)
    assert all(not r.success and r.tcp_reachable is False for r in got)
    assert all(r.error == "connection refused" for r in got)
    # … while connection attempts back off: 0, 0.1, 0.2, 0.4, 0.8, 0.8 … s apart (less 20 %).
    # A late loop on a busy machine may fit one fewer; without backoff there would be ~20.
    assert 3 <= pinger.connect_failures <= 8, pinger.connect_failures


async def test_unreadable_client_key_is_reported(fleet: SshFleet, home: Path) -> None:
    await fleet.add_peer("127.0.0.21")
    results = Results()
    ssh = ssh_settings(fleet, client_keys=(str(home / "no-such-key"),))
    pinger = Pinger(ping_settings(), ssh, home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.21"]))
    async with running(pinger):
        await eventually(lambda: len(results.of("127.0.0.21")) >= 2)
    got = results.of("127.0.0.21")
    assert all(not r.success and (r.error or "").startswith("cannot load client keys") for r in got)
    assert fleet.counters.accepted == 0  # it never dialled


async def test_changed_host_key_is_refused_under_accept_new(fleet: SshFleet, home: Path) -> None:
    peer = await fleet.add_peer("127.0.0.9")
    results = Results()
    pinger = Pinger(ping_settings(), ssh_settings(fleet), home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.9"]))
    known_hosts = home / "known_hosts"
    async with running(pinger):
        await eventually(lambda: bool(results.ok("127.0.0.9")))
        recorded = known_hosts.read_text()
        assert recorded == f"[127.0.0.9]:{peer.port} {peer.host_key_line}\n"
        assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600

        await peer.change_host_key()
        changed = time.monotonic()
        await eventually(lambda: len(results.of("127.0.0.9", changed)) >= 4)
    after = results.of("127.0.0.9", changed)
    assert not any(r.success for r in after)
    refused = [r for r in after if r.error and "host key" in r.error]
    assert refused and all(r.tcp_reachable is True for r in refused)
    error = refused[0].error or ""
    assert "host key changed" in error and str(known_hosts) in error
    assert known_hosts.read_text() == recorded  # never silently replaced


async def test_known_hosts_policy_refuses_unknown_key_until_trusted(
    fleet: SshFleet, home: Path, tmp_path: Path
) -> None:
    await fleet.add_peer("127.0.0.10")
    other = await fleet.add_peer("127.0.0.11", start=False)  # only its key goes in the file
    known_hosts = tmp_path / "trusted_hosts"
    known_hosts.write_text(f"127.0.0.10 {other.host_key_line}\n")
    results = Results()
    ssh = ssh_settings(fleet, host_key_policy="known_hosts", known_hosts=str(known_hosts))
    pinger = Pinger(ping_settings(), ssh, home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.10"]))
    async with running(pinger):
        await eventually(lambda: len(results.of("127.0.0.10")) >= 3)
        assert not results.ok("127.0.0.10")
        assert "host key not trusted" in (results.of("127.0.0.10")[-1].error or "")
        # Trusting the key in the file is picked up by the next attempt: no restart.
        known_hosts.write_text(fleet.known_hosts_text())
        await eventually(lambda: bool(results.ok("127.0.0.10")))
    assert not (home / "known_hosts").exists()  # accept-new's file is not touched


@pytest.mark.parametrize(("handshakes", "refused"), [(8, False), (50, True)])
async def test_concurrent_handshakes_stay_under_max_startups(
    tmp_path: Path, home: Path, handshakes: int, refused: bool
) -> None:
    addresses = [f"127.0.1.{i}" for i in range(1, 51)]
    async with SshFleet(tmp_path, max_startups=10) as fleet:  # like OpenSSH's MaxStartups
        await fleet.add_peers(addresses)
        results = Results()
        ssh = ssh_settings(fleet, max_concurrent_handshakes=handshakes)
        # A generous timeout: this test is about handshakes, not latency under load.
        pinger = Pinger(
            ping_settings(interval_seconds=1.0, timeout_seconds=0.9), ssh, home, results
        )
        pinger.set_targets(targets_for(fleet, addresses))
        async with running(pinger):
            if not refused:
                await eventually(lambda: pinger.connected == 50, 10)
                assert fleet.counters.refused == 0
                assert fleet.counters.peak_handshaking <= handshakes
                assert pinger.connect_failures == 0
                assert fleet.counters.authenticated == 50
                # Every first-use key is recorded, however the concurrent writes coalesced.
                recorded = (home / "known_hosts").read_text().splitlines()
                assert sorted(recorded) == sorted(fleet.known_hosts_text().splitlines())
                # First rounds start at random phases over the 1 s interval, not all at once.
                # Counted in the pinger's own 50 ms ticks: on a busy machine the loop wakes
                # late and several ticks' rounds share one timestamp, but all-at-once
                # would put every first round in one or two ticks.
                await eventually(lambda: all(results.of(a) for a in addresses), 10)
                firsts = sorted(results.of(a)[0].at.timestamp() for a in addresses)
                assert firsts[-1] - firsts[0] >= 0.5, firsts
                assert len({round(t / 0.05) for t in firsts}) >= 4, firsts
            else:  # the control: without the cap the same fleet refuses connections
                await eventually(lambda: fleet.counters.refused > 0, 10)


async def test_set_targets_and_stop_close_everything(fleet: SshFleet, home: Path) -> None:
    before = asyncio.all_tasks()
    peers = await fleet.add_peers(["127.0.0.12", "127.0.0.13", "127.0.0.14"])
    results = Results()
    pinger = Pinger(ping_settings(), ssh_settings(fleet), home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.12", "127.0.0.13"]))
    ready = asyncio.Event()
    task = asyncio.create_task(pinger.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    await eventually(lambda: all(p.connections for p in peers[:2]))

    pinger.set_targets(targets_for(fleet, ["127.0.0.12", "127.0.0.14"]))
    await eventually(lambda: not peers[1].connections, 10, "removed peer's connection closed")
    await eventually(lambda: bool(results.ok("127.0.0.14")))
    removed = time.monotonic()
    await eventually(lambda: len(results.of("127.0.0.12", removed)) >= 2)
    assert not results.of("127.0.0.13", removed + TIMEOUT)

    # A changed target (new port) is a new peer: the old connection goes.
    moved = await fleet.add_peer("127.0.0.15")
    pinger.set_targets(
        {
            "127.0.0.12": target("127.0.0.12", "127.0.0.15", moved.port),
            "127.0.0.14": target("127.0.0.14", "127.0.0.14", peers[2].port),
        }
    )
    await eventually(lambda: not peers[0].connections and bool(moved.connections), 10)

    stop_started = time.monotonic()
    pinger.stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - stop_started < TIMEOUT + 3.0
    # The harness's own server-side handlers end a moment after the client closes;
    # a task the pinger leaked would never end.
    await eventually(lambda: asyncio.all_tasks() - before <= {asyncio.current_task()}, 5)
    assert pinger.connected == 0
    await eventually(lambda: not any(p.connections for p in fleet.peers.values()), 5)


async def test_stop_finishes_a_ping_in_flight(fleet: SshFleet, home: Path) -> None:
    peer = await fleet.add_peer("127.0.0.16")
    results = Results()
    pinger = Pinger(
        ping_settings(interval_seconds=1.0, timeout_seconds=0.9), ssh_settings(fleet), home, results
    )
    pinger.set_targets(targets_for(fleet, ["127.0.0.16"]))
    ready = asyncio.Event()
    task = asyncio.create_task(pinger.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    await eventually(lambda: bool(results.ok("127.0.0.16")))
    peer.echo_delay = 0.4
    await eventually(lambda: peer.echoes_pending > 0)
    sent = len(results.all)
    pinger.stop()
    await asyncio.wait_for(task, 5)
    assert len(results.all) == sent + 1  # the ping in flight was reported …
    assert results.all[-1][1].success  # … with its real outcome
    await eventually(lambda: not peer.connections, 5)


async def test_cancelling_run_cancels_and_closes(fleet: SshFleet, home: Path) -> None:
    before = asyncio.all_tasks()
    peer = await fleet.add_peer("127.0.0.17")
    results = Results()
    pinger = Pinger(ping_settings(), ssh_settings(fleet), home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.17"]))
    ready = asyncio.Event()
    task = asyncio.create_task(pinger.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    await eventually(lambda: bool(results.ok("127.0.0.17")))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert asyncio.all_tasks() - before == {asyncio.current_task()} - before
    await eventually(lambda: not peer.connections, 5)


async def test_new_interval_applies_without_waiting_out_the_old(
    fleet: SshFleet, home: Path
) -> None:
    await fleet.add_peer("127.0.0.18")
    results = Results()
    slow = ping_settings(interval_seconds=30.0)
    ssh = ssh_settings(fleet)
    pinger = Pinger(slow, ssh, home, results)
    pinger.set_targets(targets_for(fleet, ["127.0.0.18"]))
    async with running(pinger):
        await eventually(lambda: pinger.connected == 1)
        fast = ping_settings(interval_seconds=0.1, timeout_seconds=0.08)
        await pinger.reconfigure(Settings.model_construct(ping=fast, ssh=ssh), frozenset({"ping"}))
        changed = time.monotonic()
        # The old interval is 30 s: three rounds within 10 s can only come from the new one.
        await eventually(lambda: len(results.of("127.0.0.18", changed)) >= 3, 10)


async def test_openssh_end_to_end(tmp_path: Path, home: Path) -> None:
    if sshd_path() is None:
        pytest.fail("OpenSSH sshd not found: make system-deps (apt-get install openssh-server)")
    key = make_client_key(tmp_path)
    async with OpenSshServer(tmp_path, ["127.0.0.19"], [key.public_line]) as sshd:
        results = Results()
        ssh = SshSettings(
            host_key_policy="accept-new",
            client_keys=(str(key.path),),
            connect_timeout_seconds=5.0,
            install_check_command="test -x /bin/sh",
            install_check_every_rounds=2,
            reconnect_initial_seconds=0.1,
        )
        pinger = Pinger(ping_settings(), ssh, home, results)
        pinger.set_targets({"gw-sshd": PingTarget("gw-sshd", "127.0.0.19", sshd.port, sshd.user)})
        async with running(pinger):
            await eventually(lambda: len(results.of("gw-sshd")) >= 4, 10)
        got = results.of("gw-sshd")
        assert all(r.success and r.tcp_reachable for r in got), got
        assert [r.installed for r in got[:4]] == [True, None, True, None]
        assert (home / "known_hosts").read_text() == sshd.known_hosts_text()
        assert pinger.connects == 1


async def test_openssh_fleet_connects_within_max_startups(tmp_path: Path, home: Path) -> None:
    if sshd_path() is None:
        pytest.fail("OpenSSH sshd not found: make system-deps (apt-get install openssh-server)")
    key = make_client_key(tmp_path)
    groups = [[f"127.0.4.{i}" for i in range(g * 16 + 1, g * 16 + 17)] for g in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for n, group in enumerate(groups):  # sshd listens on at most 16 addresses
            directory = tmp_path / f"sshd{n}"
            directory.mkdir()
            servers.append(
                await stack.enter_async_context(
                    OpenSshServer(directory, group, [key.public_line])  # MaxStartups 10:30:100
                )
            )
        results = Results()
        ssh = SshSettings(
            host_key_policy="accept-new",
            client_keys=(str(key.path),),
            max_concurrent_handshakes=8,
            install_check_command="true",
        )
        # A generous timeout: this test is about handshakes, not latency under load.
        pinger = Pinger(
            ping_settings(interval_seconds=1.0, timeout_seconds=0.9), ssh, home, results
        )
        pinger.set_targets(
            {
                a: PingTarget(a, a, server.port, server.user)
                for server, group in zip(servers, groups, strict=True)
                for a in group
            }
        )
        async with running(pinger):
            await eventually(lambda: pinger.connected == 32, 15)
            await eventually(lambda: pinger.pings_sent >= 32, 5)
        assert pinger.connect_failures == 0 and pinger.pings_failed == 0
