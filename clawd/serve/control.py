"""A private unix socket through which the CLI talks to the running daemon.

One JSON request line, one JSON answer line. The socket is mode 0600 in the
home directory, so only clawd's own user can reach it. Clients, request size and
depth, and the time a client may stay silent are bounded; each kind of misbehaving
client is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.ratelog import LOG_INTERVAL, RateLimitedLog

log = structlog.get_logger("clawd.serve.control")

SOCKET_NAME = "clawd.sock"
MAX_REQUEST = 64 * 1024
# The CLI opens one connection per command; 64 leaves room for scripts running in parallel.
MAX_CLIENTS = 64
# The CLI sends its request at once and reads its answer at once; slower is not a client.
IDLE_TIMEOUT = 10.0
# Requests are flat objects ({"cmd": "status", "why": "gw-b"}): deeper is not a request.
MAX_DEPTH = 32
# A status answer grows with the fleet (~250 bytes a peer).
MAX_ANSWER = 16 * 1024 * 1024

QUOTE, BACKSLASH = ord('"'), ord("\\")
OPENERS, CLOSERS = frozenset(b"[{"), frozenset(b"]}")

Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


def _private_socket(path: Path) -> socket.socket:
    """A listening unix socket created mode 0600: no window where it is wider.

    Linux gives the socket file the mode of the socket's inode (minus the umask), so
    fchmod before bind does it without touching the process-wide umask, which other
    threads creating files and folders at the same time depend on.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class _Client:
    """One accepted connection; `evicted` when a newer client took its slot."""

    __slots__ = ("evicted", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.evicted = False


class ControlServer:
    """Serves one request a connection, within bounds on clients, size, depth and time."""

    name = "control"

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        *,
        max_clients: int = MAX_CLIENTS,
        idle_timeout: float = IDLE_TIMEOUT,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self._clients: set[_Client] = set()
        # Clients that have not sent their request line yet, oldest first.
        self._waiting: dict[_Client, None] = {}
        self._warn = RateLimitedLog(log, log_interval)

    async def run(self, ready: asyncio.Event) -> None:
        # Off the loop, as every file operation of the daemon's (blocking: a slow disk
        # would stall every ping).
        await asyncio.to_thread(_remove, self.path)  # a stale socket from a crashed run
        self._server = await asyncio.start_unix_server(
            self._serve, sock=_private_socket(self.path), limit=MAX_REQUEST
        )
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            self._server.close()
            for client in list(self._waiting):
                client.writer.close()
            await self._server.wait_closed()
            await asyncio.to_thread(_remove, self.path)

    def stop(self) -> None:
        self._stopped.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """The socket's place is under `home`, which cannot change while clawd runs."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        try:
            if self._admit(client):
                await self._exchange(client, reader)
        except (ConnectionError, TimeoutError) as exc:
            self._warn.warning("control_client_gone", error=type(exc).__name__)
        finally:
            self._clients.discard(client)
            self._waiting.pop(client, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    def _admit(self, client: _Client) -> bool:
        """Take a slot; when all are taken, the oldest silent client gives its slot up.

        A real client sends its request at once, so only a silent one is evicted: an idle
        flood cannot lock `clawd status` out. With every slot busy answering, refuse.
        """
        if len(self._clients) >= self.max_clients:
            self._warn.warning("control_clients_over_limit", limit=self.max_clients)
            if not self._waiting:
                client.writer.write(_line(_error(self._over_limit())))
                return False
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            self._clients.discard(oldest)
            oldest.evicted = True
            oldest.writer.write(_line(_error(self._over_limit())))
            oldest.writer.close()  # its read ends; _serve sees `evicted` and goes quietly
        self._clients.add(client)
        self._waiting[client] = None
        return True

    def _over_limit(self) -> str:
        return f"too many control connections (at most {self.max_clients} at a time); try again"

    async def _exchange(self, client: _Client, reader: asyncio.StreamReader) -> None:
        try:
            async with asyncio.timeout(self.idle_timeout):
                line = await reader.readline()
        except TimeoutError:
            self._warn.warning("control_client_idle", seconds=self.idle_timeout)
            line, answer = b"", _error(f"no request line within {self.idle_timeout:g} s")
        except ValueError:  # the line is longer than the stream's limit
            self._warn.warning("control_request_too_large", limit_bytes=MAX_REQUEST)
            line, answer = b"", _error(f"request line longer than {MAX_REQUEST} bytes")
        else:
            self._waiting.pop(client, None)
            if client.evicted or not line:
                return  # evicted (already answered), or a connect-only liveness probe
            answer = await self._answer(line)
        client.writer.write(_line(answer))
        async with asyncio.timeout(self.idle_timeout):
            await client.writer.drain()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        if too_deep(line):
            self._warn.warning("control_request_too_deep", limit=MAX_DEPTH)
            return _error(f"request nested deeper than {MAX_DEPTH} levels")
        try:
            request = json.loads(line)
            handler = self.handlers[request["cmd"]]
        except (ValueError, KeyError, TypeError, RecursionError):
            return _error("unknown or malformed request")
        try:
            return await handler(request)
        except Exception as exc:  # one broken command must not take the socket down
            self._warn.error("control_handler_failed", cmd=request["cmd"], error=repr(exc))
            return _error("the command failed; see clawd's log")


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _line(answer: Mapping[str, Any]) -> bytes:
    return json.dumps(answer).encode() + b"\n"


def too_deep(line: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when arrays and objects in a JSON text nest deeper than `limit` (brackets
    inside strings do not count).

    Checked before json.loads, whose recursion a hostile line could otherwise exhaust.
    """
    if line.count(b"[") + line.count(b"{") <= limit:
        return False  # skips the scan for every ordinary request
    depth = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == BACKSLASH:
                escaped = True
            elif byte == QUOTE:
                in_string = False
        elif byte == QUOTE:
            in_string = True
        elif byte in OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif byte in CLOSERS:
            depth -= 1
    return False


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """open_unix_connection that waits for room when the daemon's listen backlog is full.

    There a unix socket's connect fails at once with EAGAIN, and asyncio's own connect
    takes that for "in progress" and hands back a socket that never connected.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.connect(str(path))
                break
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the caller bounds the wait
        return await asyncio.open_unix_connection(sock=sock, limit=MAX_ANSWER)
    except BaseException:
        sock.close()
        raise


class NoAnswer(ClawdError):
    """No daemon answered on the control socket (none runs, or it is hung)."""


async def request(home: Path, cmd: str, wait_seconds: float = 60.0, **args: Any) -> dict[str, Any]:
    """Ask the daemon running on `home`; NoAnswer when none answers."""
    path = socket_path(home)
    try:
        reader, writer = await asyncio.wait_for(_connect(path), 5)
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
        raise NoAnswer(
            f"no running clawd answers on {path} (is `clawd run` or the clawd service up?)"
        ) from None
    except PermissionError:
        raise ClawdError(f"permission denied on {path}: run as clawd's user") from None
    try:
        writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), wait_seconds)
    except TimeoutError:
        raise NoAnswer(f"clawd did not answer on {path} within {wait_seconds:g} s") from None
    except ConnectionError:
        raise NoAnswer("the daemon closed the connection without answering") from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise NoAnswer("the daemon closed the connection without answering")
    answer: dict[str, Any] = json.loads(line)
    return answer
