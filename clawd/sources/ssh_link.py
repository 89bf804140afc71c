"""One SSH link to a peer: the connection and its long-lived ``cat`` channel, timed echo
round trips (a ping writes one byte and times its echo: about what an SSH keepalive costs,
and far less than an exec per ping), and exit statuses of commands."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from clawd.core.errors import ClawdError
from clawd.core.trust import Trust

ECHO_COMMAND = "cat"
ECHO_BYTE = b"."


@dataclass(frozen=True, slots=True)
class HostKeyTrust:
    """The host key a connection was made with, and how far it is trusted."""

    trust: Trust = Trust.NONE
    fingerprint: str = ""
    key: str = ""  # OpenSSH public key line
    # The gateway id whose pin this key matched (it proved that id before), if any.
    pinned_for: str | None = None


class LinkDown(ClawdError):
    """The peer's link failed a ping (timeout, channel or connection closed)."""


class EchoTimeout(LinkDown):
    """The link is open (the peer's TCP port answered) but no echo came back in time."""


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
        self.closed = describe_error(exc) if exc else "channel closed by peer"
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(-1.0)
        if self.on_closed is not None:
            self.on_closed(self.closed)

    def arm(self) -> asyncio.Future[float]:
        self._waiter = waiter = self._loop.create_future()
        return waiter


OUTPUT_LIMIT = 64 * 1024  # a state.json is a few hundred bytes; a flood is cut here


class ExitStatusSession(asyncssh.SSHClientSession[bytes]):
    """An exec channel that wants the command's exit status (and its first output bytes)."""

    def __init__(self) -> None:
        self.done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.output = bytearray()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype is None and len(self.output) < OUTPUT_LIMIT:
            self.output += data[: OUTPUT_LIMIT - len(self.output)]

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
        key: HostKeyTrust | None = None,
    ) -> None:
        self.conn = conn
        self.key = key or HostKeyTrust()
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
        status, _ = await self.run(command, seconds)
        return status

    async def run(self, command: str, seconds: float) -> tuple[int | None, bytes]:
        """Run `command` on a second channel: see :func:`run_command`."""
        return await run_command(self.conn, command, seconds)

    def close(self) -> None:
        self.conn.close()

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()


async def run_command(
    conn: asyncssh.SSHClientConnection, command: str, seconds: float
) -> tuple[int | None, bytes]:
    """Run `command` on a channel of `conn`: (exit status or None on a signal or timeout,
    the first OUTPUT_LIMIT bytes of its stdout)."""
    chan: asyncssh.SSHClientChannel[bytes] | None = None
    session = ExitStatusSession()
    try:
        async with asyncio.timeout(seconds):
            chan, _ = await conn.create_session(lambda: session, command, encoding=None)
            chan.write_eof()
            return await session.done, bytes(session.output)
    except TimeoutError:
        return None, bytes(session.output)
    finally:
        if chan is not None and not session.done.done():
            chan.close()


def describe_error(exc: BaseException) -> str:
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
