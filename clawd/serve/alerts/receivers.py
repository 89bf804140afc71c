"""Where notifications go: a receiver per Apprise URL, named without its secrets.

Apprise URLs carry their credentials anywhere: `user:password@`, a bot token in the host
position (`tgram://123456:ABC/chat`), webhook tokens in the path (`slack://T/B/XXXX`,
`gotify://host/token`), keys in the query. So a receiver is shown as its scheme and a real
host name at most, and any text apprise reports is scrubbed of every part of the URL that
is not shown before it becomes a `DeliveryError`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol
from urllib.parse import unquote

from clawd.core.redact import MASK, mask_text
from clawd.serve.alerts.message import Message

SEND_TIMEOUT = 30.0
REASON_MAX = 200
MIN_SCRUBBED = 3  # shorter URL parts would mask unrelated letters of a reason, not secrets

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\.?"
)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"\d{1,5}")
_QUERY_KEY = re.compile(r"[A-Za-z0-9_.:+-]{1,40}")


# What each event is to a receiver that shows a kind (an icon, a colour).
class DeliveryError(Exception):
    """A receiver did not take a message; the text is one line and holds no secret."""


class Receiver(Protocol):
    """Something a message can be sent to."""

    id: str  # stable and not secret: names the receiver's cursor in the outbox
    name: str  # for people and logs: the URL with its secrets masked

    async def send(self, message: Message) -> None:
        """Deliver `message` or raise DeliveryError."""
        ...


def _host_port(hostport: str) -> tuple[str, list[str]]:
    """The shown form of `host[:port]` and the parts hidden."""
    host, port = hostport, ""
    if _IPV6.match(hostport):
        end = hostport.index("]") + 1
        host, rest = hostport[:end], hostport[end:]
        if rest.startswith(":"):
            port = rest[1:]
        elif rest:
            return MASK, [hostport]
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    if port and not _PORT.fullmatch(port):
        return MASK, [hostport]  # `123456:ABC` is a token, not a host and a port
    real_host = (
        _IPV6.fullmatch(host)
        or _IPV4.fullmatch(host)
        or _DNS_NAME.fullmatch(host)
        or host.lower() == "localhost"
        or (port and _LABEL.fullmatch(host))
    )
    if host and not real_host:
        return MASK, [hostport]  # in that position apprise URLs mostly hold a token or ID
    return host + (f":{port}" if port else ""), []


def _redacted(url: str) -> tuple[str, list[str]]:
    """The shown form of `url` and the parts of it that are hidden."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return MASK, [url]
    hidden: list[str] = []
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        # An unencoded / ? or # in a password moves it out of the authority; nothing
        # after the scheme can be told apart from it.
        return f"{scheme}://{MASK}", [rest]
    userinfo, at, hostport = authority.rpartition("@")
    shown = f"{scheme}://"
    if at:
        shown += f"{MASK}@"
        hidden += [userinfo, *userinfo.split(":")]
    host, hidden_host = _host_port(hostport)
    shown += host
    hidden += hidden_host
    tail, hash_, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    segments = [s for s in path.split("/") if s]
    if segments:
        shown += f"/{MASK}"
        hidden += segments
    if question:
        shown += "?" + "&".join(_query_item(item, hidden) for item in query.split("&") if item)
    if hash_:
        shown += f"#{MASK}"
        hidden.append(fragment)
    return shown, hidden


def _query_item(item: str, hidden: list[str]) -> str:
    key, eq, value = item.partition("=")
    if not eq or not _QUERY_KEY.fullmatch(key):
        hidden.append(item)
        return MASK
    hidden.append(value)
    return f"{key}={MASK}"


def redact_url(url: str) -> str:
    """`url` as people and logs may see it: scheme and real host (and port) at most."""
    return _redacted(url)[0]


def receiver_id(url: str) -> str:
    """A stable name for the receiver of `url` that does not reveal it."""
    return hashlib.sha256(url.strip().encode()).hexdigest()[:16]


def scrub(text: str, hidden: list[str]) -> str:
    """`text` on one line, at most REASON_MAX long, without any of the `hidden` parts."""
    secrets = {s for part in hidden for s in (part, unquote(part)) if len(s) >= MIN_SCRUBBED}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = " ".join(mask_text(text).split())
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."
