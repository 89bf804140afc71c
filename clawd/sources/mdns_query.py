"""One mDNS question for a peer's own instance, answered by the peer itself or not at all.

It is a "legacy unicast" query (RFC 6762 section 6.7): sent to the mDNS group from a port
of its own, not 5353, with no known answers. No cache answers it (ours, or another
host's): only the responder that holds the record does, twice -- straight back to this
socket, at once, and by multicast to the group (python-zeroconf answers both ways). The
multicast copy reaches clawd's own zeroconf even where a host firewall admits only UDP
5353 and drops the unicast reply; it is held back only when the record went out less than
a second ago (RFC 6762 section 6), which the unicast reply is not. Either one, carrying
the instance's SRV record, means the peer's announcer is running now.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from collections.abc import Iterable, Sequence

# zeroconf's package exports the DNS* classes for its users ("for backwards compat"), outside
# its __all__: the attr-defined ignore is only mypy's re-export check; types are checked.
from zeroconf import (  # type: ignore[attr-defined]
    DNSAddress,
    DNSIncoming,
    DNSOutgoing,
    DNSQuestion,
    DNSService,
    RecordUpdate,
    RecordUpdateListener,
    Zeroconf,
)

MDNS_PORT = 5353
GROUP_V4 = "224.0.0.251"
GROUP_V6 = "ff02::fb"
TYPE_SRV = 33
CLASS_IN = 1
FLAGS_QUERY = 0x0000
MULTICAST_TTL = 255  # RFC 6762 section 11: mDNS packets go out with TTL / hop limit 255


def query_packet(names: Sequence[str], query_id: int) -> bytes:
    """A legacy unicast query (its id set, no known answers) for these instances' SRV."""
    out = DNSOutgoing(FLAGS_QUERY, multicast=False, id_=query_id)
    for name in names:
        out.add_question(DNSQuestion(name, TYPE_SRV, CLASS_IN))
    (packet,) = out.packets()  # a few questions always fit one packet
    return packet


def names_instance(records: Iterable[object], names: Sequence[str], ip: str | None) -> bool:
    """Do these records answer for one of `names` (its SRV, not a goodbye), and when they
    say where that instance lives, at the address we ping?"""
    wanted = {name.lower() for name in names}
    records = list(records)
    servers = {
        r.server_key for r in records if isinstance(r, DNSService) and r.key in wanted and r.ttl > 0
    }
    if not servers:
        return False
    addresses = [r.address for r in records if isinstance(r, DNSAddress) and r.key in servers]
    if not addresses or ip is None:
        return True
    try:
        packed = ipaddress.ip_address(ip).packed
    except ValueError:
        return True  # a host name (static peer): nothing to compare with
    return packed in addresses


def is_answer(data: bytes, query_id: int, names: Sequence[str], ip: str | None) -> bool:
    """Is this packet the reply to our query (RFC 6762 6.7: it echoes the query's id)?"""
    msg = DNSIncoming(data)
    if not msg.valid or msg.id != query_id or not msg.is_response():
        return False
    return names_instance(msg.answers(), names, ip)


class _Replies(asyncio.DatagramProtocol):
    """The unicast replies to our own socket."""

    def __init__(
        self, query_id: int, names: Sequence[str], ip: str | None, done: asyncio.Future[bool]
    ) -> None:
        self._query = (query_id, names, ip)
        self._done = done

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self._done.done() and is_answer(data, *self._query):
            self._done.set_result(True)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for one send: the wait decides


class _Heard(RecordUpdateListener):
    """The multicast answers, as clawd's own zeroconf receives them: each record as it
    arrives (one the cache holds already, too: it is being said now)."""

    def __init__(self, names: Sequence[str], ip: str | None, done: asyncio.Future[bool]) -> None:
        super().__init__()
        self._names, self._ip, self._done = names, ip, done

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        if not self._done.done() and names_instance(
            (u.new for u in records), self._names, self._ip
        ):
            self._done.set_result(True)

    def async_update_records_complete(self) -> None:
        pass


async def sources_for(ip: str | None, interfaces: Sequence[str] | None) -> list[str | None]:
    """The local addresses to ask from: the configured interfaces of the peer's address
    family, or the one the kernel routes the peer's address from (None: its default)."""
    version = _version(ip)
    if interfaces:
        return [a for a in interfaces if version is None or _version(a) == version]
    if ip is None or version is None:
        return [None]
    loop = asyncio.get_running_loop()
    try:  # connecting a UDP socket sends nothing: it only picks the route
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(ip, MDNS_PORT)
        )
    except OSError:
        return [None]
    try:
        return [str(transport.get_extra_info("sockname")[0])]
    finally:
        transport.close()


def _version(address: str | None) -> int | None:
    try:
        return ipaddress.ip_address(address or "").version
    except ValueError:
        return None


def _socket(source: str | None, v6: bool) -> socket.socket:
    """A UDP socket on a port of its own, multicasting from `source` (None: the default)."""
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if v6:
            host, _, scope = (source or "::").partition("%")
            index = _interface_index(scope)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, MULTICAST_TTL)
            if index:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.bind((host, 0, 0, index))
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)
            if source:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
            sock.bind((source or "0.0.0.0", 0))  # noqa: S104 -- the kernel's default interface
    except BaseException:
        sock.close()
        raise
    return sock


def _interface_index(scope: str) -> int:
    """An IPv6 scope (`fe80::1%eth0` or `%2`) as an interface index; 0: the default."""
    if not scope:
        return 0
    return int(scope) if scope.isdigit() else socket.if_nametoindex(scope)


async def instance_answers(
    names: Sequence[str],
    ip: str | None,
    interfaces: Sequence[str] | None,
    wait_seconds: float,
    zc: Zeroconf | None = None,
) -> bool:
    """Does the peer answer a query for its own instance (`names`) within `wait_seconds`?
    `zc`: clawd's running zeroconf, which hears the multicast copy of the answer.

    OSError when no query could be sent at all (no usable interface, the network is down).
    """
    sources = await sources_for(ip, interfaces)
    query_id = secrets.randbelow(0xFFFF) + 1
    packet = query_packet(names, query_id)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    heard = _Heard(names, ip, done) if zc is not None else None
    transports: list[asyncio.DatagramTransport] = []
    failure: OSError | None = None
    try:
        if zc is not None and heard is not None:
            zc.async_add_listener(heard, None)  # None: no replay of what the cache holds
        for source in sources:
            v6 = _version(source or ip) == 6
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Replies(query_id, names, ip, done), sock=_socket(source, v6)
                )
                transports.append(transport)
                transport.sendto(packet, (GROUP_V6 if v6 else GROUP_V4, MDNS_PORT))
            except OSError as exc:
                failure = exc
        if not transports:
            raise failure or OSError("no interface to send an mDNS query from")
        try:
            async with asyncio.timeout(wait_seconds):
                return await done
        except TimeoutError:
            return False
    finally:
        for transport in transports:
            transport.close()
        if zc is not None and heard is not None:
            zc.async_remove_listener(heard)
