"""Just enough HTTP/1.1 for a scrape endpoint: a bounded request head, one-shot responses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

# A Prometheus scrape's head is well under 1 kB; anything near this is not a scraper.
MAX_HEAD = 16 * 1024

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    """The client sent something that is not an HTTP request head within MAX_HEAD bytes."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str


async def read_request(reader: asyncio.StreamReader, max_head: int = MAX_HEAD) -> Request | None:
    """Read and parse a request head of at most `max_head` bytes; None if the client sent none.

    Raises BadRequest. The reader's own limit must not exceed `max_head`, so no single
    line can buffer more than that.
    """
    try:
        first = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise BadRequest("connection closed inside the request line") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("request line too long") from None
    request = parse_request_line(first)
    size = len(first)
    while True:  # headers: a scrape needs none of them, but they must end in time
        try:
            line = await reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise BadRequest("incomplete or oversized headers") from None
        size += len(line)
        if size > max_head:
            raise BadRequest("request head too large")
        if line in (b"\r\n", b"\n"):
            return request


def parse_request_line(line: bytes) -> Request:
    """`GET /metrics?x HTTP/1.1` -> Request("GET", "/metrics"); BadRequest otherwise."""
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise BadRequest("malformed request line")
    method, target, _version = parts
    return Request(method, target.split("?", 1)[0])


def response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection; HEAD gets no body."""
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
