"""One SSH connection to a peer for file transfer (SFTP) and commands."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from posixpath import dirname
from types import TracebackType

import asyncssh

from clawd.core.errors import ClawdError
from clawd.core.trust import Trust
from clawd.sources.ssh_client import Connector, SshConnectError

STDERR_TAIL = 300
# Enough for a command's short machine-readable answer; a chatty login shell's noise
# ahead of it is cut from the front.
STDOUT_TAIL = 16_384


class RemoteError(ClawdError):
    """A file transfer or command on a peer failed."""


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where and as whom to reach a peer."""

    gateway_id: str
    name: str
    host: str
    port: int
    user: str
    # How its host key is trusted: only known-hosts/operator peers receive secrets.
    trust: Trust = Trust.NONE


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_status: int | None
    stderr_tail: str
    stdout_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.SFTPError):
        return f"sftp: {exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


Borrow = Callable[[str], "asyncssh.SSHClientConnection | None"]


@dataclass(frozen=True, slots=True)
class Reach:
    """How this clawd reaches peers for leader work: over the pinger's open connection to
    a peer when `borrow` lends one (no handshake per action), else with its own."""

    connector: Connector
    borrow: Borrow | None = None

    def host(self, peer: PeerAddress) -> RemoteHost:
        return RemoteHost(self.connector, peer, self.borrow)


class RemoteHost:
    """An SSH connection + SFTP session; paths are relative to the login's home.

    With `borrow`, the pinger's open connection to the peer is used (one more channel,
    no handshake) and left open; otherwise a connection is made and closed.
    """

    def __init__(
        self, connector: Connector, peer: PeerAddress, borrow: Borrow | None = None
    ) -> None:
        self.connector = connector
        self.peer = peer
        self._borrowed = borrow(peer.gateway_id) if borrow is not None else None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None

    async def __aenter__(self) -> RemoteHost:
        p = self.peer
        if self._borrowed is not None:
            self._conn = self._borrowed
        else:
            try:
                self._conn = await self.connector.open_connection(
                    p.host, p.port, p.user, gateway_id=p.gateway_id
                )
            except SshConnectError as exc:
                raise RemoteError(exc.error) from None
        try:
            self._sftp = await self._conn.start_sftp_client()
        except (OSError, asyncssh.Error) as exc:
            await self.aclose()
            raise RemoteError(f"no SFTP on the peer: {_reason(exc)}") from None
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            sftp.exit()
        conn, self._conn = self._conn, None
        if conn is not None and conn is not self._borrowed:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    @property
    def sftp(self) -> asyncssh.SFTPClient:
        assert self._sftp is not None, "use RemoteHost as an async context manager"
        return self._sftp

    async def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            async with self.sftp.open(path, "rb") as f:
                data: bytes = await f.read()
                return data
        except asyncssh.SFTPNoSuchFile:
            return None
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"cannot read {path}: {_reason(exc)}") from None

    async def write_atomic(
        self, path: str, data: bytes, mode: int = 0o600, *, make_parents: bool = True
    ) -> None:
        """Write to a temp file created with `mode`, then rename over `path`.

        Without `make_parents`, a missing parent folder is an error, not created.
        """
        parent = dirname(path)
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        sftp = self.sftp
        try:
            if parent and make_parents:
                await sftp.makedirs(parent, exist_ok=True)
            attrs = asyncssh.SFTPAttrs(permissions=mode)
            async with sftp.open(tmp, "wb", attrs) as f:
                await f.write(data)
                with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                    await f.fsync()
            # The mode given at creation is subject to the peer's umask.
            await sftp.chmod(tmp, mode)
            await self._rename(tmp, path)
        except (OSError, asyncssh.Error) as exc:
            with contextlib.suppress(OSError, asyncssh.Error):
                await sftp.remove(tmp)
            raise RemoteError(f"cannot write {path}: {_reason(exc)}") from None

    async def _rename(self, src: str, dst: str) -> None:
        try:
            await self.sftp.posix_rename(src, dst)
        except asyncssh.SFTPOpUnsupported:
            # Plain SFTP v3 rename refuses an existing target.
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await self.sftp.remove(dst)
            await self.sftp.rename(src, dst)

    async def run(self, command: str, seconds: float) -> CommandResult:
        """Run `command`; exit status None when it timed out or died by a signal."""
        assert self._conn is not None
        try:
            done = await self._conn.run(
                command, check=False, timeout=seconds, stdin=asyncssh.DEVNULL
            )
        except asyncssh.TimeoutError as exc:
            tail = str(exc.stderr or "")[-STDERR_TAIL:]
            return CommandResult(None, f"timed out after {seconds:g}s {tail}".strip())
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"cannot run the command: {_reason(exc)}") from None
        stderr = done.stderr if isinstance(done.stderr, str) else ""
        stdout = done.stdout if isinstance(done.stdout, str) else ""
        return CommandResult(done.exit_status, stderr.strip()[-STDERR_TAIL:], stdout[-STDOUT_TAIL:])
