"""Connecting to peers over SSH: bounded handshakes (TCP first, so a refused port is told
apart from a failed login), the host-key policy applied at the handshake, client keys.

What a connection becomes, a :class:`clawd.sources.ssh_link.Link` with its echo channel, is in
clawd/sources/ssh_link.py; which host keys are trusted is in clawd/sources/ssh_hostkeys.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import structlog

from clawd.config.sections import SshSettings
from clawd.config.ssh_files import (
    TOFU_FILE_NAME,
    known_hosts_path,
    read_client_keys,
)
from clawd.core.errors import ClawdError, ConfigError
from clawd.core.trust import Trust
from clawd.sources.pins import Pin, PinStore, key_text
from clawd.sources.ssh_hostkeys import KnownHostsFile, TrustOnFirstUse
from clawd.sources.ssh_link import (
    ECHO_COMMAND,
    EchoSession,
    HostKeyTrust,
    Link,
    describe_error,
)

log = structlog.get_logger("clawd.sources.pinger")
T = TypeVar("T")


class SshConnectError(ClawdError):
    """An SSH connection to a peer could not be made; `tcp_reachable` says how far it got."""

    def __init__(self, error: str, tcp_reachable: bool | None) -> None:
        super().__init__(error)
        self.error = error
        self.tcp_reachable = tcp_reachable


class _Client(asyncssh.SSHClient):
    """Accepts an unknown host key under accept-new (asyncssh asks only for untrusted keys)."""

    def __init__(self, accept_unknown_key: bool) -> None:
        self._accept_unknown_key = accept_unknown_key
        self.offered: asyncssh.SSHKey | None = None  # the untrusted key the server showed

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        # A peer with a recorded key that shows another one is refused, never re-recorded.
        self.offered = key
        return self._accept_unknown_key


@dataclass
class Attempt:
    """Where a connection attempt is, for a ping round that cannot wait for it; once done,
    the host key it was made with and how far that key is trusted."""

    stage: str = "queued"  # queued -> tcp -> ssh -> done
    key: HostKeyTrust = field(default_factory=HostKeyTrust)


async def _open_tcp(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[tuple[int, Any]] = [(info[0], info[4]) for info in infos]
    else:
        addresses = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
    error: OSError = OSError(f"no address for {host}")
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise error


class Connector:
    """Opens Links: at most `max_concurrent_handshakes` at once, host keys per policy."""

    def __init__(self, ssh: SshSettings, home: Path) -> None:
        self.home = home
        self.ssh = ssh
        self._handshakes = asyncio.Semaphore(ssh.max_concurrent_handshakes)
        self._tofu = TrustOnFirstUse(home / TOFU_FILE_NAME)
        self.pins = PinStore.for_home(home)
        self._refused: set[tuple[str, str]] = set()  # (gateway, fingerprint) logged once
        self._known_hosts = self._known_hosts_file(ssh)
        self._client_keys: list[asyncssh.SSHKeyPair] | None = None
        self._client_keys_lock = asyncio.Lock()

    @staticmethod
    def _known_hosts_file(ssh: SshSettings) -> KnownHostsFile:
        return KnownHostsFile.shared(known_hosts_path(ssh))

    def update(self, ssh: SshSettings) -> None:
        """New settings apply to the next connection attempt."""
        old, self.ssh = self.ssh, ssh
        if ssh.max_concurrent_handshakes != old.max_concurrent_handshakes:
            self._handshakes = asyncio.Semaphore(ssh.max_concurrent_handshakes)
        if ssh.known_hosts != old.known_hosts:
            self._known_hosts = self._known_hosts_file(ssh)
        if ssh.client_keys != old.client_keys:
            self._client_keys = None

    @property
    def tofu_path(self) -> Path:
        return self._tofu.path

    async def _load_client_keys(self, ssh: SshSettings) -> list[asyncssh.SSHKeyPair] | None:
        """The configured client keys, read once (None: asyncssh's defaults)."""
        if not ssh.client_keys:
            return None
        async with self._client_keys_lock:
            if self._client_keys is None:
                try:
                    self._client_keys = await asyncio.to_thread(read_client_keys, ssh.client_keys)
                except ConfigError as exc:
                    raise SshConnectError(f"cannot load client keys: {exc}", None) from exc
            return self._client_keys

    async def connect(
        self, host: str, port: int, user: str, attempt: Attempt, gateway_id: str | None = None
    ) -> Link:
        """Open a Link, or raise SshConnectError with a short reason."""
        conn = await self.open_connection(host, port, user, attempt, gateway_id)
        seconds = self.ssh.connect_timeout_seconds
        try:
            echo = EchoSession()
            async with asyncio.timeout(seconds):
                chan, _ = await conn.create_session(lambda: echo, ECHO_COMMAND, encoding=None)
        except TimeoutError:
            conn.abort()
            raise SshConnectError(f"echo channel not opened within {seconds:g}s", True) from None
        except (OSError, asyncssh.Error) as exc:
            conn.abort()
            raise SshConnectError(describe_error(exc), True) from exc
        except BaseException:
            conn.abort()
            raise
        attempt.stage = "done"
        return Link(conn, chan, echo, attempt.key)

    async def open_connection(
        self,
        host: str,
        port: int,
        user: str,
        attempt: Attempt | None = None,
        gateway_id: str | None = None,
    ) -> asyncssh.SSHClientConnection:
        """An authenticated connection under the host-key policy, or SshConnectError.

        With `gateway_id`, a key pinned for that id is the only one accepted, at any address
        (see clawd/sources/pins.py); `attempt.key` tells how the key is trusted.
        """
        attempt = attempt or Attempt()
        ssh = self.ssh
        accept_new = ssh.host_key_policy == "accept-new"
        client_keys = await self._load_client_keys(ssh)
        known = await self._known_hosts.load()
        await self.pins.refresh()
        pin = self.pins.get(gateway_id) if gateway_id else None
        known_hosts: Any
        recorded: asyncssh.SSHKey | None = None
        if pin is not None:
            known_hosts = ([asyncssh.import_public_key(pin.key)], [], [])
        elif accept_new:
            await self._tofu.refresh()
            recorded = self._tofu.recorded(host, port)
            if recorded is None and self._tofu.error is not None:
                raise SshConnectError(f"no new host key is trusted: {self._tofu.error}", None)
            known_hosts = ([recorded] if recorded else [], [], [])
        else:
            known_hosts = known
        client = _Client(accept_unknown_key=pin is None and accept_new and recorded is None)
        async with self._handshakes:
            try:
                async with asyncio.timeout(ssh.connect_timeout_seconds):
                    conn = await self._handshake(
                        host, port, user, attempt, known_hosts, client, client_keys
                    )
            except TimeoutError:
                tcp = attempt.stage == "ssh"
                what = "SSH handshake" if tcp else "TCP connect"
                raise SshConnectError(
                    f"{what} timed out after {ssh.connect_timeout_seconds:g}s", tcp
                ) from None
            except asyncssh.HostKeyNotVerifiable as exc:
                if pin is not None:
                    raise SshConnectError(self._pin_refused(pin, host, port, client), True) from exc
                error = self._host_key_error(accept_new)
                raise SshConnectError(error, True) from exc
        attempt.key = self._key_trust(conn, pin, known, host, port)
        if pin is None and accept_new and recorded is None:
            try:
                await self._remember(host, port, conn)
            except BaseException:  # cancelled mid-write (peer removed, stopping): not leaked
                conn.abort()
                raise
        return conn

    async def _handshake(
        self,
        host: str,
        port: int,
        user: str,
        attempt: Attempt,
        known_hosts: Any,
        client: _Client,
        client_keys: list[asyncssh.SSHKeyPair] | None,
    ) -> asyncssh.SSHClientConnection:
        options: dict[str, Any] = {}
        if client_keys is not None:
            options["client_keys"] = client_keys
        attempt.stage = "tcp"
        try:
            sock = await _open_tcp(host, port)
        except OSError as exc:
            raise SshConnectError(describe_error(exc), False) from exc
        attempt.stage = "ssh"
        try:
            conn = await asyncssh.connect(
                host,
                port,
                sock=sock,
                username=user,
                known_hosts=known_hosts,
                client_factory=lambda: client,
                config=None,
                gss_host=None,
                connect_timeout=None,
                **options,
            )
        except asyncssh.HostKeyNotVerifiable:
            sock.close()
            raise
        except (OSError, asyncssh.Error) as exc:
            sock.close()
            raise SshConnectError(describe_error(exc), True) from exc
        except ValueError as exc:  # asyncssh decoding a garbage banner (UnicodeDecodeError)
            sock.close()
            raise SshConnectError(f"not an SSH server: {type(exc).__name__}", True) from exc
        except BaseException:
            sock.close()
            raise
        return conn

    async def _remember(self, host: str, port: int, conn: asyncssh.SSHClientConnection) -> None:
        key = conn.get_server_host_key()
        if key is None:  # GSS key exchange: no host key to record (gss_host=None: never)
            return
        try:
            added = await self._tofu.remember(host, port, key)
        except OSError as exc:
            # Trusted for this process's life all the same; the next write retries it.
            log.error("cannot_record_host_key", file=str(self._tofu.path), error=str(exc))
            return
        if added:
            log.info(
                "host_key_recorded",
                host=host,
                port=port,
                key_type=key.get_algorithm(),
                fingerprint=key.get_fingerprint(),
                file=str(self._tofu.path),
            )

    @staticmethod
    def _key_trust(
        conn: asyncssh.SSHClientConnection,
        pin: Pin | None,
        known: asyncssh.SSHKnownHosts,
        host: str,
        port: int,
    ) -> HostKeyTrust:
        key = conn.get_server_host_key()
        if key is None:
            return HostKeyTrust()
        text = key_text(key)
        in_known_hosts = any(key_text(k) == text for k in known.match(host, host, port)[0])
        if pin is not None and pin.trust is Trust.OPERATOR:
            trust = Trust.OPERATOR
        elif in_known_hosts:
            trust = Trust.KNOWN_HOSTS
        elif pin is not None:
            trust = pin.trust
        else:
            trust = Trust.FIRST_USE  # only accept-new lets an unlisted key through
        pinned_for = pin.gateway_id if pin is not None else None
        return HostKeyTrust(trust, key.get_fingerprint(), text, pinned_for)

    def _pin_refused(self, pin: Pin, host: str, port: int, client: _Client) -> str:
        offered = client.offered.get_fingerprint() if client.offered else "?"
        if (pin.gateway_id, offered) not in self._refused:  # once per key, not per retry
            self._refused.add((pin.gateway_id, offered))
            log.warning(
                "host_key_differs_from_pin",
                gateway=pin.gateway_id,
                host=host,
                port=port,
                offered=offered,
                pinned=pin.fingerprint,
                pinned_host=pin.host,
                file=str(self.pins.path),
            )
        return (
            f"host key {offered} differs from the one pinned for {pin.gateway_id} "
            f"({pin.fingerprint}); refused (re-keyed? run: clawd peer trust {pin.gateway_id})"
        )

    async def remember_identity(
        self, gateway_id: str, host: str, port: int, key: HostKeyTrust
    ) -> None:
        """Pin `key` for `gateway_id` (the peer's own state.json named the id over a
        connection with that key), or move its pin to host:port; a no-op once pinned there."""
        if not key.key or key.trust is Trust.NONE:
            return
        pin = self.pins.get(gateway_id)
        if pin is not None and pin.key == key.key and (pin.host, pin.port) == (host, port):
            return
        if pin is not None and pin.key != key.key:
            return  # never: the handshake accepts only the pinned key
        trust = pin.trust if pin is not None else key.trust
        new = Pin(gateway_id, key.key, key.fingerprint, trust, host, port, _now())
        try:
            await self.pins.pin(new)
        except OSError as exc:
            log.error("cannot_pin_host_key", file=str(self.pins.path), error=str(exc))
            return
        log.info(
            "host_key_pinned" if pin is None else "pinned_peer_moved",
            gateway=gateway_id,
            host=host,
            port=port,
            fingerprint=key.fingerprint,
            trust=trust.value,
        )

    def _host_key_error(self, accept_new: bool) -> str:
        if accept_new:
            return f"host key changed (differs from the one in {self._tofu.path}); refused"
        return f"host key not trusted (not in {self._known_hosts.path}); refused"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
