"""The ping scheduler: every peer, every interval (jittered), over one persistent SSH link.

Each peer has one long-lived round task in the TaskGroup owned by :meth:`Pinger.run`; a
connection task exists only while the peer is (re)connecting. A round times one byte through
the peer's echo channel (see :mod:`clawd.sources.ssh_link`) and emits exactly one PingResult,
also while the peer is disconnected, so misses are counted. A peer's state and backoff live in
:mod:`clawd.sources.ping_peer`, when its rounds start in :mod:`clawd.sources.ping_schedule`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import asyncssh
import structlog

from clawd.config.sections import PingSettings, SshSettings
from clawd.config.settings import Settings
from clawd.core.observations import Observation, PeerProof, PingResult
from clawd.sources.identity import check_peer
from clawd.sources.ping_peer import PeerState, PingTarget, stalled_attempt
from clawd.sources.ping_schedule import jittered_interval, on_tick, phase, wake
from clawd.sources.ssh_client import Attempt, Connector, SshConnectError
from clawd.sources.ssh_link import EchoTimeout, Link, LinkDown

log = structlog.get_logger("clawd.sources.pinger")

CLOSE_WAIT_SECONDS = 1.0  # how long stopping waits for each connection's goodbye


class Pinger:
    """Pings every target over asyncssh and reports each attempt through `emit`."""

    name = "pinger"

    def __init__(
        self,
        ping: PingSettings,
        ssh: SshSettings,
        home: Path,
        emit: Callable[[Observation], None],
    ) -> None:
        self._ping = ping
        self._ssh = ssh
        self._emit = emit
        self._connector = Connector(ssh, home)
        self._peers: dict[str, PeerState] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._stretch = 1.0  # timeout factor while clawd doubts itself (self-health guard)
        self.pings_sent = 0  # attempts reported, successful or not
        self.pings_failed = 0
        self.connects = 0
        self.connect_failures = 0
        self.install_checks = 0

    # ----------------------------------------------------------------- public API

    @property
    def targets(self) -> dict[str, PingTarget]:
        return {key: peer.target for key, peer in self._peers.items()}

    @property
    def connected(self) -> int:
        """Peers with an open link right now."""
        return sum(1 for peer in self._peers.values() if peer.link is not None)

    def connection(self, gateway_id: str) -> asyncssh.SSHClientConnection | None:
        """The peer's open SSH connection, for leader work to borrow (never to close)."""
        peer = self._peers.get(gateway_id)
        link = peer.link if peer is not None else None
        if link is None or link.closed is not None:
            return None
        return link.conn

    def counters(self) -> dict[str, int]:
        tallies = ("pings_sent", "pings_failed", "connects", "connect_failures", "install_checks")
        live = {"peers": len(self._peers), "connected": self.connected}
        return live | {name: getattr(self, name) for name in tallies}

    def set_targets(self, targets: Mapping[str, PingTarget]) -> None:
        """Ping exactly these peers from now on; links of removed or changed ones are closed."""
        for key, peer in list(self._peers.items()):
            if targets.get(key) != peer.target:
                del self._peers[key]
                self._retire(peer)
        for key, target in targets.items():
            if key not in self._peers:
                peer = PeerState(target, self._ssh.reconnect_initial_seconds)
                self._peers[key] = peer
                if self._tg is not None and not self._stopping:
                    self._launch(peer)

    def recheck_install(self, gateway_id: str) -> None:
        """Check whether claw-clan is installed on this peer in its next round."""
        peer = self._peers.get(gateway_id)
        if peer is not None:
            peer.check_due = True

    def stretch(self, factor: float) -> None:
        """Multiply every ping timeout by `factor` (1.0 = as configured), from the next round."""
        self._stretch = factor

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """Live reload: timings apply from each peer's next round, SSH options from its next
        connection."""
        if not changed & {"ping", "ssh", "detection"}:
            return
        ping, ssh, old = settings.ping, settings.ssh, self._ping
        self._ping, self._ssh = ping, ssh
        self._connector.update(ssh)
        if ping.interval_seconds != old.interval_seconds:
            for peer in self._peers.values():
                if peer.sleeper is not None:  # a peer mid-round picks it up by itself
                    peer.reschedule = True
                    peer.wake()

    def stop(self) -> None:
        """Stop scheduling; run() lets rounds in flight finish, closes every link, returns."""
        if self._stopping:
            return
        self._stopping = True
        for peer in self._peers.values():
            self._halt(peer)
        self._stop.set()

    async def run(self, ready: asyncio.Event) -> None:
        """Ping until stop() (or cancellation); `ready` is set once every peer is scheduled."""
        if self._tg is not None:
            raise RuntimeError("Pinger.run() is already running")
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if not self._stopping:
                    for peer in self._peers.values():
                        self._launch(peer)
                log.info(
                    "pinger_started",
                    peers=len(self._peers),
                    interval_s=self._ping.interval_seconds,
                    max_handshakes=self._ssh.max_concurrent_handshakes,
                )
                ready.set()
                await self._stop.wait()
        finally:
            self._tg = None
        log.info("pinger_stopped", pings_sent=self.pings_sent, pings_failed=self.pings_failed)

    # ----------------------------------------------------------------- peers

    def _launch(self, peer: PeerState) -> None:
        assert self._tg is not None
        rounds = self._rounds(peer)
        try:
            peer.task = self._tg.create_task(rounds, name=f"clawd-ping-{peer.target.gateway_id}")
        except RuntimeError:  # run() was cancelled: its task group takes no new tasks
            rounds.close()

    def _halt(self, peer: PeerState) -> None:
        """No more rounds or connection attempts; a round in flight may finish."""
        peer.stopping = True
        peer.wake()
        if peer.keeper is not None:
            peer.keeper.cancel()

    def _retire(self, peer: PeerState) -> None:
        self._halt(peer)
        if peer.task is not None:
            peer.task.cancel()  # its finally closes the link
        log.info("peer_removed", gateway=peer.target.gateway_id, host=peer.target.host)

    async def _rounds(self, peer: PeerState) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._start_keeper(peer)
            due = loop.time() + phase(self._ping.interval_seconds)
            last_due: float | None = None
            while not peer.stopping:
                await peer.sleep_until(on_tick(due, self._ping.interval_seconds))
                if peer.stopping:
                    break
                if peer.reschedule:
                    peer.reschedule = False
                    if last_due is None:
                        due = loop.time() + phase(self._ping.interval_seconds)
                    else:
                        due = last_due + jittered_interval(self._ping)
                    continue
                last_due = due
                await self._round(peer)
                peer.reschedule = False  # the next due time below uses the new settings
                due = max(due + jittered_interval(self._ping), loop.time())
        finally:
            await self._release(peer)

    async def _release(self, peer: PeerState) -> None:
        self._halt(peer)
        link, peer.link = peer.link, None
        if link is None:
            return
        link.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_SECONDS):
                await link.wait_closed()

    # ----------------------------------------------------------------- one round

    async def _round(self, peer: PeerState) -> None:
        ping = self._ping
        timeout = ping.timeout_seconds * self._stretch
        at = datetime.now(UTC)
        link = peer.link
        if link is None:
            link, error, tcp_reachable = await self._wait_for_link(peer, timeout)
            if link is None:
                if not peer.stopping:  # a round cut short by stop() is no attempt
                    self._report_failure(peer, at, error, tcp_reachable)
                return
        try:
            rtt = await link.round_trip(timeout)
        except LinkDown as exc:
            # A timed-out echo on an open link: the peer answers TCP, its SSH is too slow.
            tcp = True if isinstance(exc, EchoTimeout) else None
            self._link_down(peer, link, str(exc), tcp)
            self._report_failure(peer, at, str(exc), tcp)
            return
        peer.proven = True
        installed: bool | None = None
        proof: PeerProof | None = None
        peer.rounds_since_check += 1
        ssh = self._ssh
        every = min(ssh.install_check_every_rounds, peer.unproven_every)
        check = peer.check_due or peer.rounds_since_check >= every
        if check and not peer.stopping:  # stopping: report the echo now, check next time
            installed, proof = await self._install_check(peer, link, ssh, timeout)
        self.pings_sent += 1
        self._emit(
            PingResult(
                peer.target.gateway_id,
                at,
                True,
                response_ms=round(rtt * 1000.0),
                tcp_reachable=True,
                installed=installed,
                proof=proof,
            )
        )

    def _report_failure(
        self, peer: PeerState, at: datetime, error: str | None, tcp_reachable: bool | None
    ) -> None:
        self.pings_sent += 1
        self.pings_failed += 1
        self._emit(
            PingResult(
                peer.target.gateway_id,
                at,
                False,
                tcp_reachable=tcp_reachable,
                error=error or "not connected",
            )
        )

    async def _wait_for_link(
        self, peer: PeerState, seconds: float
    ) -> tuple[Link | None, str | None, bool | None]:
        """(link, None, None) if a connection attempt under way delivers one within
        `seconds`; else (None, why not, tcp_reachable)."""
        self._start_keeper(peer)
        done, attempt = peer.attempt_done, peer.attempt
        if done is None or attempt is None:  # waiting out a reconnect backoff
            return None, peer.last_error, peer.tcp_reachable
        await asyncio.wait((done,), timeout=seconds)
        if done.done():
            if peer.link is not None:
                return peer.link, None, None
            return None, peer.last_error, peer.tcp_reachable
        return (None, *stalled_attempt(attempt, seconds))

    async def _install_check(
        self, peer: PeerState, link: Link, ssh: SshSettings, seconds: float
    ) -> tuple[bool | None, PeerProof | None]:
        peer.check_due = False
        peer.rounds_since_check = 0
        self.install_checks += 1
        target = peer.target
        installed, proof = await check_peer(link, target.gateway_id, ssh, seconds)
        if peer.identity_read(proof):
            await self._connector.remember_identity(
                target.gateway_id, target.host, target.port, link.key
            )
        return installed, proof

    # ----------------------------------------------------------------- connecting

    def _start_keeper(self, peer: PeerState) -> None:
        tg = self._tg
        if peer.keeper is not None or peer.link is not None or peer.stopping or tg is None:
            return
        connect = self._connect(peer)
        try:
            peer.keeper = tg.create_task(connect, name=f"clawd-connect-{peer.target.gateway_id}")
        except RuntimeError:  # run() was cancelled: its task group takes no new tasks
            connect.close()

    async def _connect(self, peer: PeerState) -> None:
        """Connect, retrying with exponential backoff until a link is up (or stop)."""
        loop = asyncio.get_running_loop()
        target = peer.target
        try:
            while not peer.stopping:
                delay = peer.retry_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                peer.attempt = attempt = Attempt()
                peer.attempt_done = done = loop.create_future()
                started = loop.time()
                try:
                    link = await self._connector.connect(
                        target.host, target.port, target.user, attempt, target.gateway_id
                    )
                except SshConnectError as exc:
                    self._connect_failed(peer, exc.error, exc.tcp_reachable)
                except Exception as exc:  # an asyncssh surprise must not stop the others
                    log.exception("ssh_connect_crashed", gateway=target.gateway_id)
                    self._connect_failed(peer, f"{type(exc).__name__}: {exc}", None)
                else:
                    self._connected(peer, link, loop.time() - started)
                    return
                finally:
                    peer.attempt = peer.attempt_done = None
                    wake(done)
        finally:
            if peer.keeper is asyncio.current_task():
                peer.keeper = None

    def _connect_failed(self, peer: PeerState, error: str, tcp_reachable: bool | None) -> None:
        self.connect_failures += 1
        now = asyncio.get_running_loop().time()
        delay = peer.back_off(now, self._ssh.reconnect_max_seconds, spread=True)
        if error != peer.last_error:
            log.warning(
                "ssh_connect_failed",
                gateway=peer.target.gateway_id,
                host=peer.target.host,
                port=peer.target.port,
                error=error,
                tcp_reachable=tcp_reachable,
                retry_in_s=round(delay, 2),
            )
        peer.last_error, peer.tcp_reachable = error, tcp_reachable

    def _connected(self, peer: PeerState, link: Link, handshake_s: float) -> None:
        if peer.stopping:
            link.close()
            return
        self.connects += 1
        peer.link = link
        peer.proven = False
        peer.check_due = True
        peer.last_error, peer.tcp_reachable = None, True
        link.on_closed(partial(self._link_closed, peer, link))
        log.info(
            "ssh_connected",
            gateway=peer.target.gateway_id,
            host=peer.target.host,
            port=peer.target.port,
            handshake_ms=round(handshake_s * 1000.0),
        )
        if link.closed is not None:
            self._link_closed(peer, link, link.closed)

    def _link_closed(self, peer: PeerState, link: Link, reason: str) -> None:
        """asyncssh callback: the peer (or the network) closed the link."""
        if peer.link is link:
            self._link_down(peer, link, reason)

    def _link_down(
        self, peer: PeerState, link: Link, reason: str, tcp_reachable: bool | None = None
    ) -> None:
        if peer.link is not link:
            return
        peer.link = None
        link.close()
        peer.last_error, peer.tcp_reachable = reason, tcp_reachable
        now = asyncio.get_running_loop().time()
        if peer.proven:  # it worked: try again at once
            peer.retry_delay = self._ssh.reconnect_initial_seconds
            peer.retry_at = now
        else:  # connects but does not answer: back off like a failed connect
            peer.back_off(now, self._ssh.reconnect_max_seconds, spread=False)
        log.warning("ssh_disconnected", gateway=peer.target.gateway_id, reason=reason)
        self._start_keeper(peer)
