"""`clawd probe HOST:PORT`: does this machine reach a peer's SSH server?

A tool for operators (is it the network, or the peer?). The daemon's own indirect probes
(``clawd.sources.indirect``) read the same banner with :func:`read_banner`, through a helper
peer's SSH connection, and never run this command remotely. The check opens a TCP connection
and reads the SSH identification line (RFC 4253 4.2), all within one timeout; it never
authenticates and needs no config, home directory or settings.

Everything the target sends is escaped before it is printed: a peer cannot forge output lines
or terminal escapes. Output is one line, JSON with ``--json``; exit 0 reachable, 1 not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import math
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from clawd.core.errors import ClawdError

DEFAULT_PORT = 22
DEFAULT_TIMEOUT = 3.0
MAX_TIMEOUT = 120.0  # as settings.detection allows for probeTimeoutSeconds
MAX_LINE = 255  # bytes of one line before its CR LF (RFC 4253: 255 including CR LF)
MAX_OTHER_LINES = 10  # lines a server may send before its identification line
MAX_ADDRESSES = 4  # resolved addresses tried, in order
BANNER_CHARS = 100  # escaped banner shown, at most
EXCERPT_CHARS = 40  # escaped excerpt of a non-SSH answer, in an error

EXIT_REACHABLE = 0
EXIT_UNREACHABLE = 1

_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?\.?")
_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timed out",
    errno.EADDRNOTAVAIL: "address not available",
}


class ProbeUsageError(ClawdError):
    """A bad TARGET or --timeout (the CLI prints `error: …` and exits 2)."""


# --------------------------------------------------------------------------- arguments


def _valid_host(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    address = host.split("%", 1)[0] if "%" in host else host
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "%" not in host and _HOST_NAME.fullmatch(host) is not None
    if "%" in host:  # an IPv6 zone: fe80::1%eth0
        zone = host.split("%", 1)[1]
        return ":" in address and re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", zone) is not None
    return True


def _port(text: str, target: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ProbeUsageError(f"bad port in target {target!r}: want 1-65535")
    return int(text)


def parse_target(text: str) -> tuple[str, int]:
    """`host:port`, `[ipv6]:port`, `host` or a bare IPv6 address -> (host, port); port 22."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ProbeUsageError(f"bad target {text!r}: want [ipv6]:port")
        port = _port(rest[1:], text) if rest else DEFAULT_PORT
        if ":" not in host:
            raise ProbeUsageError(f"bad target {text!r}: brackets are for IPv6 addresses")
    elif text.count(":") > 1:  # a bare IPv6 address, no port
        host, port = text, DEFAULT_PORT
    else:
        host, sep, rest = text.partition(":")
        port = _port(rest, text) if sep else DEFAULT_PORT
    if not _valid_host(host):
        raise ProbeUsageError(f"bad target {text!r}: want host:port, [ipv6]:port or host")
    return host, port


def parse_timeout(text: str) -> float:
    """Seconds, more than 0 and at most MAX_TIMEOUT."""
    try:
        seconds = float(text)
    except ValueError:
        raise ProbeUsageError(f"bad --timeout {text!r}: want seconds, e.g. 3") from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        raise ProbeUsageError(f"bad --timeout {text!r}: want more than 0, at most {MAX_TIMEOUT:g}")
    return seconds


def format_target(host: str, port: int) -> str:
    """The TARGET argument for host and port (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- the check


def escape(data: bytes, limit: int) -> str:
    """Printable ASCII as is, other bytes as \\xNN, backslash doubled; at most `limit` chars
    (cut short with "...")."""
    out: list[str] = []
    size = 0
    for byte in data:
        if byte == 0x5C:
            piece = "\\\\"
        elif 0x20 <= byte < 0x7F:
            piece = chr(byte)
        else:
            piece = f"\\x{byte:02x}"
        if size + len(piece) > limit:
            while out and size + 3 > limit:
                size -= len(out.pop())
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: str
    reachable: bool
    tcp: bool  # the TCP connection was made
    banner: str | None  # escaped SSH identification line
    ms: float
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def json_line(self) -> str:
        return json.dumps(self.as_dict())  # ensure_ascii: one line whatever the content

    def human_line(self) -> str:
        if self.reachable:
            return f"{self.target} reachable: {self.banner} ({self.ms:.1f} ms)"
        return f"{self.target} unreachable: {self.error} ({self.ms:.1f} ms)"

    @property
    def exit_code(self) -> int:
        return EXIT_REACHABLE if self.reachable else EXIT_UNREACHABLE


AddrInfo = tuple[int, int, int, Any]  # family, type, proto, sockaddr


async def _resolve(host: str, port: int) -> list[AddrInfo]:
    """getaddrinfo off the loop in a daemon thread: a hung resolver cannot hold exit back.

    (asyncio's default executor would make asyncio.run wait for it after the timeout.)
    """
    numeric = host.split("%", 1)[0]
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(numeric)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return [(f, t, p, a) for f, t, p, _, a in infos]
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[list[AddrInfo]] = loop.create_future()

    def deliver(result: list[AddrInfo] | BaseException) -> None:
        if answer.done():
            return
        if isinstance(result, BaseException):
            answer.set_exception(result)
        else:
            answer.set_result(result)

    def work() -> None:
        result: list[AddrInfo] | BaseException
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result = [(f, t, p, a) for f, t, p, _, a in infos]
        except OSError as exc:
            result = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(deliver, result)

    threading.Thread(target=work, name="clawd-probe-resolve", daemon=True).start()
    return await answer


async def _connect(infos: list[AddrInfo]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The first address that accepts; else the first address's error."""
    loop = asyncio.get_running_loop()
    first_error: OSError | None = None
    for family, type_, proto, sockaddr in infos[:MAX_ADDRESSES]:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            first_error = first_error or exc
            continue
        except BaseException:
            sock.close()
            raise
        # limit: a line longer than MAX_LINE (plus CR) raises LimitOverrunError
        return await asyncio.open_connection(sock=sock, limit=MAX_LINE + 1)
    raise first_error or OSError(errno.EADDRNOTAVAIL, "no address to connect to")


class LineReader(Protocol):
    """A byte stream read line by line: asyncio's StreamReader, or asyncssh's SSHReader."""

    async def readuntil(self, separator: bytes, /) -> bytes: ...


class NoBanner(Exception):
    """The server answered but sent no SSH identification line."""


async def read_banner(reader: LineReader) -> bytes:
    """The SSH identification line; up to MAX_OTHER_LINES other lines before it are skipped.

    Raises NoBanner for anything else (closed early, garbage, a line over MAX_LINE bytes).
    """
    first_other: bytes | None = None
    for _ in range(MAX_OTHER_LINES + 1):
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            seen = first_other if first_other is not None else exc.partial
            what = f" after '{escape(seen, EXCERPT_CHARS)}'" if seen else ""
            raise NoBanner(f"connection closed without an SSH banner{what}") from None
        except asyncio.LimitOverrunError:
            raise NoBanner(f"not an SSH server: a line longer than {MAX_LINE} bytes") from None
        if len(line) > MAX_LINE + 2:  # a reader without a limit (an SSH channel) got it whole
            raise NoBanner(f"not an SSH server: a line longer than {MAX_LINE} bytes")
        line = line[:-1].removesuffix(b"\r")
        if line.startswith(b"SSH-"):
            return line
        if first_other is None:
            first_other = line
    excerpt = escape(first_other or b"", EXCERPT_CHARS)
    raise NoBanner(f"not an SSH server: no SSH banner in {MAX_OTHER_LINES + 1} lines: '{excerpt}'")


def _os_error_text(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host name"
    if exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    return (exc.strerror or type(exc).__name__).lower()


async def check(host: str, port: int, seconds: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Connect to host:port and read its SSH banner within `seconds`; never raises for the
    network's answer (refused, silent, garbage, reset...)."""
    target = format_target(host, port)
    start = time.monotonic()
    tcp = False
    banner: str | None = None
    error: str | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(seconds):
            infos = await _resolve(host, port)
            reader, writer = await _connect(infos)
            tcp = True
            banner = escape(await read_banner(reader), BANNER_CHARS)
    except TimeoutError:
        stage = "waiting for the SSH banner" if tcp else "connecting"
        error = f"timed out after {seconds:g}s {stage}"
    except NoBanner as exc:
        error = str(exc)
    except OSError as exc:
        error = _os_error_text(exc)
    finally:
        if writer is not None:
            writer.close()  # no wait_closed: the peer owes us nothing more
    ms = round((time.monotonic() - start) * 1000, 1)
    return ProbeResult(target, banner is not None, tcp, banner, ms, error)


def run(target: str, timeout: str | None, *, as_json: bool) -> int:
    """`clawd probe`: parse, check, print one line; the exit code. Bad usage raises
    ProbeUsageError."""
    host, port = parse_target(target)
    seconds = parse_timeout(timeout) if timeout is not None else DEFAULT_TIMEOUT
    result = asyncio.run(check(host, port, seconds))
    print(result.json_line() if as_json else result.human_line(), flush=True)
    return result.exit_code
