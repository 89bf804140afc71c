"""A private unix socket through which the CLI talks to the running daemon.

One JSON request line, one JSON answer line. The socket is mode 0600 in the
home directory, so only clawd's own user can reach it.
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

from clawd.errors import ClawdError

log = structlog.get_logger("clawd.control")

SOCKET_NAME = "clawd.sock"
MAX_REQUEST = 64 * 1024
# A status answer grows with the fleet (~250 bytes a peer).
MAX_ANSWER = 16 * 1024 * 1024

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


class ControlServer:
    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crashed run
        self._server = await asyncio.start_unix_server(
            self._serve, sock=_private_socket(self.path), limit=MAX_REQUEST
        )
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def stop(self) -> None:
        self._stopped.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                handler = self.handlers[request["cmd"]]
            except (ValueError, KeyError, TypeError):
                answer: dict[str, Any] = {"ok": False, "error": "unknown or malformed request"}
            else:
                answer = await handler(request)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.warning("control_request_failed", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class NoAnswer(ClawdError):
    """No daemon answered on the control socket (none runs, or it is hung)."""


async def request(home: Path, cmd: str, wait_seconds: float = 60.0, **args: Any) -> dict[str, Any]:
    """Ask the daemon running on `home`; NoAnswer when none answers."""
    path = socket_path(home)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=MAX_ANSWER), 5
        )
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
