"""SSH links to peers: bounded handshakes, host-key policy, and a cheap timed round trip.

A :class:`Link` is one asyncssh connection with one long-lived ``cat`` channel: a ping writes
one byte and times its echo. That costs about what an SSH keepalive does (asyncssh has no
public one-off keepalive call) and far less than an exec per ping.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import structlog

from clawd.atomic import write_atomic
from clawd.errors import ClawdError, ConfigError
from clawd.settings_sections import SshSettings
from clawd.ssh_files import (
    TOFU_FILE_NAME,
    known_hosts_path,
    parse_known_hosts,
    read_client_keys,
    read_text,
)

log = structlog.get_logger("clawd.pinger")
T = TypeVar("T")

ECHO_COMMAND = "cat"
ECHO_BYTE = b"."


class SshConnectError(ClawdError):
    """An SSH connection to a peer could not be made; `tcp_reachable` says how far it got."""

    def __init__(self, error: str, tcp_reachable: bool | None) -> None:
        super().__init__(error)
        self.error = error
        self.tcp_reachable = tcp_reachable


class LinkDown(ClawdError):
    """The peer's link failed a ping (timeout, channel or connection closed)."""


class EchoTimeout(LinkDown):
    """The link is open (the peer's TCP port answered) but no echo came back in time."""


# --------------------------------------------------------------------------- host keys


def _pattern(host: str, port: int) -> str:
    """The known_hosts host pattern OpenSSH writes for host:port."""
    return host if port == 22 else f"[{host}]:{port}"


Signature = tuple[int, int, int]  # inode, size, mtime: has the file changed?


def _file_signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _signature_or_none(path: Path) -> Signature | None:
    """The signature of a file that just failed to load (None if it cannot even be stat'ed)."""
    try:
        return _file_signature(path)
    except OSError:
        return None


def _load_if_changed(
    path: Path, known: Signature | None, parse: Callable[[str], T]
) -> tuple[Signature | None, T | None]:
    """(signature, parsed `path`); parsed is None when the signature is still `known`.

    Blocking (stat, read, parse): run it in a thread. ConfigError (naming the file) when
    it cannot be read or parsed.
    """
    signature = _file_signature(path)
    if signature == known:
        return signature, None
    return signature, parse(read_text(path) if signature else "")


def _key_text(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 AAAA…` without the comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _parse_tofu(text: str) -> dict[str, asyncssh.SSHKey]:
    keys: dict[str, asyncssh.SSHKey] = {}
    for line in text.splitlines():
        fields = line.split(None, 1)
        if len(fields) != 2 or line.startswith("#"):
            continue
        try:
            keys[fields[0]] = asyncssh.import_public_key(fields[1])
        except (asyncssh.KeyImportError, ValueError):
            continue  # not a line this class writes; OpenSSH would skip it too
    return keys


def _write_tofu(path: Path, keys: Mapping[str, asyncssh.SSHKey]) -> Signature | None:
    text = "".join(f"{pattern} {_key_text(key)}\n" for pattern, key in keys.items())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text.encode(), mode=0o600)
    return _file_signature(path)


class TrustOnFirstUse:
    """accept-new: the first key a peer shows is recorded in `path`; a different one is refused.

    The file is in OpenSSH known_hosts format, re-read when it changes on disk (delete a line
    to trust a peer's new key) and rewritten atomically (mode 0600) when keys are added.
    State changes only on the event loop; threads only read and write the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: Mapping[str, asyncssh.SSHKey] = {}
        self._signature: Signature | None = None
        self._dirty = False  # keys added since the last write started
        self._writing = False
        # Why the file cannot be read right now: no key is recorded (the file is not
        # overwritten) until it is readable again; the keys read before stay trusted.
        self.error: str | None = None

    def recorded(self, host: str, port: int) -> asyncssh.SSHKey | None:
        return self._keys.get(_pattern(host, port))

    async def refresh(self) -> None:
        """Re-read the file if it changed on disk (and no write of ours is pending)."""
        if self._writing or self._dirty:
            return
        try:
            signature, keys = await asyncio.to_thread(
                _load_if_changed, self.path, self._signature, _parse_tofu
            )
        except ConfigError as exc:
            signature = await asyncio.to_thread(_signature_or_none, self.path)
            if signature != self._signature:  # re-read (and reported) once it changes again
                self._signature = signature
                _report_unreadable(self.path, exc, "keys read before stay trusted; no new one is")
            self.error = str(exc)
            return
        if keys is not None and not (self._writing or self._dirty):
            self._keys, self._signature, self.error = keys, signature, None

    async def remember(self, host: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Trust `key` for host:port unless a key is recorded; True if it was added.

        Trusted at once; written to the file before returning, unless a write is already
        under way, which then also writes this key (a fleet's first start is one write per
        burst, not one per peer).
        """
        pattern = _pattern(host, port)
        if pattern in self._keys:
            return False
        self._keys = {**self._keys, pattern: key}
        self._dirty = True
        if self._writing:
            return True
        self._writing = True
        try:
            while self._dirty:
                self._dirty = False
                self._signature = await asyncio.to_thread(_write_tofu, self.path, self._keys)
        finally:
            self._writing = False
        return True


def _report_unreadable(path: Path, exc: ConfigError, action: str) -> None:
    # Once per change of the file, not per connection (callers see to that).
    log.error("ssh_file_unreadable", file=str(path), error=str(exc), action=action)


class KnownHostsFile:
    """known_hosts policy: only keys already in the file; re-read when the file changes.

    A file that turns unreadable (not UTF-8, a bad line, no permission) is reported once
    and the last good copy stays in force, so peers keep being pinged. One instance per
    path is shared by every Connector of the process (see `shared`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: asyncssh.SSHKnownHosts = asyncssh.import_known_hosts("")
        self._signature: Signature | None = None  # of the last version read, good or bad
        self._parsed = False  # a good copy has been read

    @classmethod
    def shared(cls, path: Path) -> KnownHostsFile:
        found = _KNOWN_HOSTS_FILES.get(path)
        if found is None:
            found = _KNOWN_HOSTS_FILES[path] = cls(path)
        return found

    async def load(self) -> asyncssh.SSHKnownHosts:
        known = self._signature
        try:
            signature, parsed = await asyncio.to_thread(
                _load_if_changed, self.path, known, lambda text: parse_known_hosts(text, self.path)
            )
        except ConfigError as exc:
            signature = await asyncio.to_thread(_signature_or_none, self.path)
            if signature != self._signature:  # a concurrent load may have reported it
                self._signature = signature
                action = "the last good copy stays in force" if self._parsed else "none trusted"
                _report_unreadable(self.path, exc, action)
            return self._known
        if parsed is not None and signature != self._signature:
            self._known, self._signature = parsed, signature
            if known is not None:
                log.info("known_hosts_reloaded", file=str(self.path))
            self._parsed = True
        return self._known


# Every Connector of the process reading one path shares its KnownHostsFile: one parse and
# one error line per change of the file, not one per Connector.
_KNOWN_HOSTS_FILES: weakref.WeakValueDictionary[Path, KnownHostsFile] = (
    weakref.WeakValueDictionary()
)


# --------------------------------------------------------------------------- channels


class EchoSession(asyncssh.SSHClientSession[bytes]):
    """The `cat` channel: resolves the pending ping when its byte comes back."""

    def __init__(self) -> None:
        self.closed: str | None = None  # why the channel closed, once it has
        self.on_closed: Callable[[str], None] | None = None
        self._waiter: asyncio.Future[float] | None = None
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._loop.time())

    def eof_received(self) -> bool:
        return False  # close the channel

    def connection_lost(self, exc: Exception | None) -> None:
        # Also called when the whole connection goes: every channel is closed with it.
        self.closed = _describe(exc) if exc else "channel closed by peer"
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(-1.0)
        if self.on_closed is not None:
            self.on_closed(self.closed)

    def arm(self) -> asyncio.Future[float]:
        self._waiter = waiter = self._loop.create_future()
        return waiter


class ExitStatusSession(asyncssh.SSHClientSession[bytes]):
    """An exec channel that only wants the command's exit status."""

    def __init__(self) -> None:
        self.done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        status = None
        if exc is None and self._chan is not None:
            status = self._chan.get_exit_status()
        self.done.set_result(None if status is None or status < 0 else status)


def _expire(waiter: asyncio.Future[Any], value: Any) -> None:
    if not waiter.done():
        waiter.set_result(value)


class Link:
    """One open SSH connection to a peer with its echo channel (at most one exec beside it)."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        chan: asyncssh.SSHClientChannel[bytes],
        echo: EchoSession,
    ) -> None:
        self.conn = conn
        self._chan = chan
        self._echo = echo
        self._loop = asyncio.get_running_loop()

    @property
    def closed(self) -> str | None:
        """Why the link went down, or None while it is up."""
        return self._echo.closed

    def on_closed(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once when the connection or its echo channel closes."""
        self._echo.on_closed = callback

    async def round_trip(self, seconds: float) -> float:
        """Seconds for one byte to come back through the echo channel; LinkDown on failure."""
        if self._echo.closed:
            raise LinkDown(self._echo.closed)
        waiter = self._echo.arm()
        start = self._loop.time()
        self._chan.write(ECHO_BYTE)
        handle = self._loop.call_at(start + seconds, _expire, waiter, 0.0)
        try:
            end = await waiter
        finally:
            handle.cancel()
        if end > 0.0:
            return end - start
        if end < 0.0:
            raise LinkDown(self._echo.closed or "echo channel closed")
        raise EchoTimeout(f"no echo within {seconds:g}s")

    async def exit_status(self, command: str, seconds: float) -> int | None:
        """Run `command` on a second channel: its exit status, None on a signal or timeout."""
        chan: asyncssh.SSHClientChannel[bytes] | None = None
        session = ExitStatusSession()
        try:
            async with asyncio.timeout(seconds):
                chan, _ = await self.conn.create_session(lambda: session, command, encoding=None)
                chan.write_eof()
                return await session.done
        except TimeoutError:
            return None
        finally:
            if chan is not None and not session.done.done():
                chan.close()

    def close(self) -> None:
        self.conn.close()

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()


# --------------------------------------------------------------------------- connecting


def _describe(exc: BaseException) -> str:
    """A short error string for a PingResult."""
    if isinstance(exc, asyncssh.PermissionDenied):
        return "authentication failed"
    if isinstance(exc, asyncssh.ConnectionLost):
        return "connection lost"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"ssh: {exc.reason}"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return f"channel refused: {exc.reason}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _Client(asyncssh.SSHClient):
    """Accepts an unknown host key under accept-new (asyncssh asks only for untrusted keys)."""

    def __init__(self, accept_unknown_key: bool) -> None:
        self._accept_unknown_key = accept_unknown_key

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        # A peer with a recorded key that shows another one is refused, never re-recorded.
        return self._accept_unknown_key


@dataclass
class Attempt:
    """Where a connection attempt is, for a ping round that cannot wait for it."""

    stage: str = "queued"  # queued -> tcp -> ssh -> done


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

    async def connect(self, host: str, port: int, user: str, attempt: Attempt) -> Link:
        """Open a Link, or raise SshConnectError with a short reason."""
        conn = await self.open_connection(host, port, user, attempt)
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
            raise SshConnectError(_describe(exc), True) from exc
        except BaseException:
            conn.abort()
            raise
        attempt.stage = "done"
        return Link(conn, chan, echo)

    async def open_connection(
        self, host: str, port: int, user: str, attempt: Attempt | None = None
    ) -> asyncssh.SSHClientConnection:
        """An authenticated connection under the host-key policy, or SshConnectError."""
        attempt = attempt or Attempt()
        ssh = self.ssh
        accept_new = ssh.host_key_policy == "accept-new"
        client_keys = await self._load_client_keys(ssh)
        known_hosts: Any
        recorded: asyncssh.SSHKey | None = None
        if accept_new:
            await self._tofu.refresh()
            recorded = self._tofu.recorded(host, port)
            if recorded is None and self._tofu.error is not None:
                raise SshConnectError(f"no new host key is trusted: {self._tofu.error}", None)
            known_hosts = ([recorded] if recorded else [], [], [])
        else:
            known_hosts = await self._known_hosts.load()
        client = _Client(accept_unknown_key=accept_new and recorded is None)
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
                error = self._host_key_error(accept_new)
                raise SshConnectError(error, True) from exc
        if accept_new and recorded is None:
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
            raise SshConnectError(_describe(exc), False) from exc
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
            raise SshConnectError(_describe(exc), True) from exc
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

    def _host_key_error(self, accept_new: bool) -> str:
        if accept_new:
            return f"host key changed (differs from the one in {self._tofu.path}); refused"
        return f"host key not trusted (not in {self._known_hosts.path}); refused"
