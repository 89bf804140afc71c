"""Discovery over real mDNS on loopback, with peers announced from another process."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from mdnspeers import FakePeer, MdnsPeers, MdnsWatcher, claw_peer, raw_txt, txt_record
from structlog.testing import capture_logs
from zeroconf import (
    DNSAddress,
    DNSIncoming,
    DNSOutgoing,
    DNSPointer,
    DNSService,
    DNSText,
    ServiceInfo,
)
from zeroconf.const import (
    _CLASS_IN,
    _CLASS_UNIQUE,
    _FLAGS_AA,
    _FLAGS_QR_RESPONSE,
    _TYPE_A,
    _TYPE_PTR,
    _TYPE_SRV,
    _TYPE_TXT,
)

from clawd.config.sections import DiscoverySettings
from clawd.core.errors import ClawdError
from clawd.core.model import Instance
from clawd.core.observations import MdnsGone, MdnsSeen, Observation
from clawd.sources.discovery import Discovery
from clawd.sources.mdns_peer import parse_peer
from clawd.sources.mdns_record import instance_label, own_service_info

pytestmark = pytest.mark.timeout(20)

LOOPBACK = ("127.0.0.1",)
WAIT = 8.0  # seconds: registration probing alone takes about 1 s


def me(
    gateway_id: str = "gw-self",
    *,
    name: str = "self",
    lead_number: int | None = 1,
    ip: str | None = "127.0.0.1",
) -> Instance:
    """This instance, as Discovery announces it."""
    return Instance(
        gateway_id, name, lead_number, ip, ssh_user="claw", ssh_port=2222, version="0.1.0"
    )


@pytest.fixture
def service_type() -> str:
    """A type of this test's own, so concurrent tests never see each other's services."""
    return f"_clawt-{secrets.token_hex(3)}._tcp.local."


@pytest.fixture
def settings(service_type: str) -> DiscoverySettings:
    return DiscoverySettings(service_type=service_type, interfaces=LOOPBACK)


class Observations:
    """What Discovery emitted, with bounded waits."""

    def __init__(self) -> None:
        self.seen: list[Observation] = []
        self.first_seen: dict[str, float] = {}  # gateway id -> time.monotonic()
        self._changed = asyncio.Event()

    def __call__(self, observation: Observation) -> None:
        self.seen.append(observation)
        if isinstance(observation, MdnsSeen):
            self.first_seen.setdefault(observation.instance.gateway_id, time.monotonic())
        self._changed.set()

    def latest(self) -> dict[str, Instance]:
        return {o.instance.gateway_id: o.instance for o in self.seen if isinstance(o, MdnsSeen)}

    def gone(self) -> list[str]:
        return [o.gateway_id for o in self.seen if isinstance(o, MdnsGone)]

    async def until(self, done: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def observations() -> Observations:
    return Observations()


@asynccontextmanager
async def running(discovery: Discovery) -> AsyncIterator[asyncio.Task[None]]:
    ready = asyncio.Event()
    task = asyncio.create_task(discovery.run(ready))
    waiter = asyncio.create_task(ready.wait())
    try:
        try:
            async with asyncio.timeout(WAIT):
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            await task  # start-up failed: raise its error
        yield task
    finally:
        discovery.stop()
        async with asyncio.timeout(WAIT):
            await task


def five_peers() -> list[FakePeer]:
    return [
        claw_peer(
            f"gw-{n}",
            name=f"peer {n}",
            lead_number=10 * n,
            ip=f"127.0.0.{n + 1}",
            ssh_user=f"user{n}",
            ssh_port=2200 + n,
            version=f"0.{n}.0",
        )
        for n in range(1, 6)
    ]


async def test_sees_five_peers_from_another_process(
    settings: DiscoverySettings, observations: Observations, no_blocking: None
) -> None:
    discovery = Discovery(me(), settings, observations)
    async with running(discovery):
        started = time.monotonic()
        async with MdnsPeers(settings.service_type, five_peers()):
            announced = time.monotonic()
            await observations.until(lambda: len(observations.latest()) == 5)
            seen = sorted(observations.first_seen.values())
            print(
                f"\n5 peers: announcer process ready {announced - started:.2f} s after spawn; "
                f"first seen at {seen[0] - started:.2f} s, all five at {seen[-1] - started:.2f} s"
            )
            peers = observations.latest()
    assert sorted(peers) == [f"gw-{n}" for n in range(1, 6)]
    for n in range(1, 6):
        peer = peers[f"gw-{n}"]
        assert (peer.name, peer.lead_number, peer.ip) == (f"peer {n}", 10 * n, f"127.0.0.{n + 1}")
        assert (peer.ssh_user, peer.ssh_port, peer.version) == (f"user{n}", 2200 + n, f"0.{n}.0")
    assert "gw-self" not in {
        o.instance.gateway_id for o in observations.seen if isinstance(o, MdnsSeen)
    }


async def test_goodbye_emits_gone_for_exactly_that_gateway(
    settings: DiscoverySettings, observations: Observations
) -> None:
    # Peers first: this time Discovery finds them by querying, not from announcements.
    discovery = Discovery(me(), settings, observations)
    async with MdnsPeers(settings.service_type, five_peers()[:3]) as peers, running(discovery):
        await observations.until(lambda: len(observations.latest()) == 3)
        with capture_logs() as logs:
            await peers.unregister("gw-2")
            await observations.until(lambda: bool(observations.gone()))
            await asyncio.sleep(0.5)  # room for a wrong extra MdnsGone to show up
        assert observations.gone() == ["gw-2"]
        assert [e for e in logs if e["event"] == "mdns_peer_gone"] == [
            {
                "event": "mdns_peer_gone",
                "gateway": "gw-2",
                "service": f"gw-2.{settings.service_type}",
                "log_level": "info",
            }
        ]


async def test_changed_txt_is_reported_again(
    settings: DiscoverySettings, observations: Observations
) -> None:
    peer = claw_peer("gw-1", lead_number=5)
    discovery = Discovery(me(), settings, observations)
    async with MdnsPeers(settings.service_type, [peer]) as peers, running(discovery):
        await observations.until(lambda: "gw-1" in observations.latest())
        with capture_logs() as logs:
            await peers.update("gw-1", claw_peer("gw-1", lead_number=2, name="new").txt)
            await observations.until(lambda: observations.latest()["gw-1"].lead_number == 2)
        assert observations.latest()["gw-1"].name == "new"
        assert [e["event"] for e in logs] == ["mdns_peer_changed"]
        assert observations.gone() == []


async def test_other_process_sees_our_record_until_stop(settings: DiscoverySettings) -> None:
    discovery = Discovery(me(), settings, lambda _: None)
    async with MdnsWatcher(settings.service_type) as watcher, running(discovery) as task:
        added = await watcher.wait_for("added", "gw-self.", WAIT)
        revision = added["txt"].pop("rev")  # changes with every change of the record
        assert added["txt"] == {
            "gateway_id": "gw-self",
            "name": "self",
            "lead_number": "1",
            "version": "0.1.0",
            "ssh_user": "claw",
            "ssh_port": "2222",
        }
        assert revision.isdigit()
        assert (added["addresses"], added["port"]) == (["127.0.0.1"], 2222)

        await discovery.update_me(me(lead_number=7, name="renamed"))
        updated = await watcher.wait_for("updated", "gw-self.", WAIT)
        assert (updated["txt"]["lead_number"], updated["txt"]["name"]) == ("7", "renamed")
        assert int(updated["txt"]["rev"]) > int(revision)

        # Issue 12 item 9 (found on a three-machine fleet): back to the values of a moment
        # ago. The earlier TXT record is still in the other side's cache, and zeroconf
        # reports no update for a record it has: without `rev` this was never seen.
        await discovery.update_me(me())
        back = await watcher.wait_for("updated", "gw-self.", WAIT)
        assert (back["txt"]["lead_number"], back["txt"]["name"]) == ("1", "self")

        discovery.stop()
        async with asyncio.timeout(WAIT):
            await task
        await watcher.wait_for("removed", "gw-self.", 3.0)  # goodbye, not TTL expiry


async def test_update_me_with_new_gateway_id_moves_the_record(settings: DiscoverySettings) -> None:
    discovery = Discovery(me(), settings, lambda _: None)
    async with MdnsWatcher(settings.service_type) as watcher, running(discovery):
        await watcher.wait_for("added", "gw-self.", WAIT)
        await discovery.update_me(me("gw-new"))
        await watcher.wait_for("removed", "gw-self.", WAIT)
        added = await watcher.wait_for("added", "gw-new.", WAIT)
        assert added["txt"]["gateway_id"] == "gw-new"


MALFORMED: dict[str, bytes] = {
    "no-gateway": txt_record({"name": "x", "lead_number": "1", "ssh_user": "u"}),
    "bad-lead": txt_record({"gateway_id": "gw-bad-lead", "name": "n", "lead_number": "abc"}),
    "evil-name": txt_record(
        {"gateway_id": "gw-evil", "name": "evil\nname\x1b[31m\u202e", "ssh_user": "root;rm -rf /"}
    ),
    "huge-gateway": txt_record({"gateway_id": "g" * 244}),
    "binary": raw_txt([b"gateway_id=\xff\xfe", b"name=\xc3"]),
    "empty-txt": b"",
    "bare-keys": raw_txt([b"gateway_id", b"=", b"", b"lead_number="]),
    "ctl-gateway": txt_record({"gateway_id": "gw\x07bell", "name": "bell"}),
    "dup-keys": raw_txt([b"GATEWAY_ID=gw-dup", b"gateway_id=gw-other", b"lead_number=99999999999"]),
}


async def test_malformed_txt_is_skipped_or_sanitized(
    settings: DiscoverySettings, observations: Observations
) -> None:
    bad = [FakePeer(label, "127.0.0.9", 22, txt) for label, txt in MALFORMED.items()]
    good = five_peers()[:2]
    discovery = Discovery(me(), settings, observations)
    wanted = {"gw-1", "gw-2", "gw-bad-lead", "gw-evil", "gw-dup"}
    with capture_logs() as logs:
        async with running(discovery) as task, MdnsPeers(settings.service_type, [*bad, *good]):
            await observations.until(lambda: wanted <= set(observations.latest()))
            await asyncio.sleep(0.5)  # let every bad record be resolved too
            assert not task.done()
    peers = observations.latest()
    assert set(peers) == wanted
    assert peers["gw-bad-lead"].lead_number is None
    assert peers["gw-evil"].name == "evil?name?[31m?"
    assert peers["gw-evil"].ssh_user is None
    assert peers["gw-dup"].lead_number is None
    assert peers["gw-1"].lead_number == 10

    warnings = [e for e in logs if e["event"] == "mdns_peer_invalid"]
    warned = sorted(e["service"].split(".")[0] for e in warnings)
    assert warned == sorted(MALFORMED)  # every bad peer once, no good one
    assert all("\n" not in e["problems"] and "\x1b" not in e["problems"] for e in warnings)


async def test_stop_leaves_no_tasks(
    settings: DiscoverySettings, observations: Observations
) -> None:
    before = asyncio.all_tasks()
    discovery = Discovery(me(), settings, observations)
    async with MdnsPeers(settings.service_type, five_peers()), running(discovery):
        await observations.until(lambda: len(observations.latest()) == 5)
    assert asyncio.all_tasks() == before


async def test_stop_during_startup_returns_promptly(settings: DiscoverySettings) -> None:
    before = asyncio.all_tasks()
    discovery = Discovery(me(), settings, lambda _: None)
    ready = asyncio.Event()
    task = asyncio.create_task(discovery.run(ready))
    await asyncio.sleep(0.05)  # inside the ~1 s name probe
    started = time.monotonic()
    discovery.stop()
    async with asyncio.timeout(WAIT):
        await task
    assert time.monotonic() - started < 1.0
    assert not ready.is_set()
    assert asyncio.all_tasks() == before


async def test_cancelled_run_closes_zeroconf(settings: DiscoverySettings) -> None:
    before = asyncio.all_tasks()
    discovery = Discovery(me(), settings, lambda _: None)
    ready = asyncio.Event()
    task = asyncio.create_task(discovery.run(ready))
    async with asyncio.timeout(WAIT):
        await ready.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() == before
    # The name is free again: a goodbye went out and nothing answers probes for it.
    async with running(Discovery(me(), settings, lambda _: None)):
        pass


def _seen_ips(observations: Observations) -> set[str | None]:
    return {o.instance.ip for o in observations.seen if isinstance(o, MdnsSeen)}


async def test_a_taken_name_is_renamed_and_peers_still_key_it_by_gateway_id(
    settings: DiscoverySettings, observations: Observations
) -> None:
    first = Discovery(me(), settings, lambda _: None)
    watcher = Discovery(me("gw-watch", ip="127.0.0.3"), settings, observations)
    async with running(first), running(watcher):
        second = Discovery(me(ip="127.0.0.2"), settings, lambda _: None)
        with capture_logs() as logs:
            async with running(second):
                assert second.announced() == {"name": "gw-self-2", "wanted": "gw-self"}
                # The renamed record (at 127.0.0.2) reaches the watcher too.
                await observations.until(lambda: "127.0.0.2" in _seen_ips(observations))
    conflicts = [e for e in logs if e["event"] == "mdns_name_conflict"]
    assert len(conflicts) == 1, logs
    assert conflicts[0]["wanted"] == "gw-self"
    assert conflicts[0]["announced"] == "gw-self-2"
    assert conflicts[0]["other_address"] == "127.0.0.1"
    # Both records carry gateway id gw-self: the watcher sees one peer, never "gw-self-2".
    assert set(observations.latest()) == {"gw-self"}


class SlowHolder:
    """A machine holding `name` that answers only after `delay` seconds, as a busy one does.

    A raw responder (no zeroconf): it answers the first question for `name`, late, with the
    records a holder announces (PTR, SRV, TXT, A), and no other question.
    """

    def __init__(self, name: str, address: str, delay: float) -> None:
        self._name, self._address, self._delay = name, address, delay
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._sock.bind(("", 5353))
        group = socket.inet_aton("224.0.0.251") + socket.inet_aton("127.0.0.1")
        self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        self._sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
        )
        self._sock.setblocking(False)
        self.asked = 0

    def _answer(self) -> bytes:
        host = "slow-holder.local."
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        unique = _CLASS_IN | _CLASS_UNIQUE
        service_type = self._name.split(".", 1)[1]
        out.add_answer_at_time(DNSPointer(service_type, _TYPE_PTR, _CLASS_IN, 4500, self._name), 0)
        out.add_answer_at_time(DNSService(self._name, _TYPE_SRV, unique, 120, 0, 0, 22, host), 0)
        out.add_answer_at_time(DNSText(self._name, _TYPE_TXT, unique, 4500, b"\x00"), 0)
        address = socket.inet_aton(self._address)
        out.add_answer_at_time(DNSAddress(host, _TYPE_A, unique, 120, address), 0)
        (packet,) = out.packets()
        return packet

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 9000)
            message = DNSIncoming(data)
            if message.is_query() and any(q.name == self._name for q in message.questions):
                self.asked += 1
                if self.asked == 1:
                    await asyncio.sleep(self._delay)
                    await loop.sock_sendto(self._sock, self._answer(), ("224.0.0.251", 5353))

    def close(self) -> None:
        self._sock.close()


async def test_a_holder_that_answers_late_still_makes_us_rename(
    settings: DiscoverySettings,
) -> None:
    # Answering 2.8 s after the question: when lookup and probe raced, the probe was over
    # by then (about 2.2 s after the lookup began) and the taken name was announced.
    taken = own_service_info(me(), settings.service_type, 0, 1).name
    holder = SlowHolder(taken, "127.0.0.9", delay=2.8)
    serving = asyncio.create_task(holder.serve())
    try:
        discovery = Discovery(me(), settings, lambda _: None)
        with capture_logs() as logs:
            async with running(discovery):
                assert discovery.announced() == {"name": "gw-self-2", "wanted": "gw-self"}
    finally:
        serving.cancel()
        holder.close()
    conflicts = [e for e in logs if e["event"] == "mdns_name_conflict"]
    assert [c["other_address"] for c in conflicts] == ["127.0.0.9"], logs


@pytest.mark.timeout(60)
async def test_renaming_is_bounded_then_a_clear_error(settings: DiscoverySettings) -> None:
    taken = [
        claw_peer(instance_label("gw-self", n), ip="127.0.0.9") for n in range(1, 10)
    ]  # gw-self, gw-self-2 … gw-self-9
    async with MdnsPeers(settings.service_type, taken):
        discovery = Discovery(me(), settings, lambda _: None)
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.timeout(40):  # 9 probes of about 1 s each
                await discovery.run(asyncio.Event())
    (error,) = caught.value.exceptions
    assert isinstance(error, ClawdError)
    assert "'gw-self'" in str(error) and "'gw-self-9'" in str(error)
    assert "127.0.0.9" in str(error) and "unique instance.gatewayId" in str(error)


@pytest.mark.parametrize("address", ["192.0.2.77", "not-an-address"])
async def test_unusable_interface_is_a_clear_error(service_type: str, address: str) -> None:
    settings = DiscoverySettings(service_type=service_type, interfaces=("127.0.0.1", address))
    with pytest.raises(ClawdError, match=f"cannot open mDNS sockets on .*{address}"):
        await Discovery(me(), settings, lambda _: None).run(asyncio.Event())


async def test_emit_failure_ends_run_with_that_error(settings: DiscoverySettings) -> None:
    def broken(_: Observation) -> None:
        raise RuntimeError("queue closed")

    ready = asyncio.Event()
    discovery = Discovery(me(), settings, broken)
    async with MdnsPeers(settings.service_type, five_peers()[:1]):
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.timeout(WAIT):
                await discovery.run(ready)
    assert [str(e) for e in caught.value.exceptions] == ["queue closed"]


# ---- no network: parsing and our own record ----------------------------------------------


def info(txt: bytes, address: str = "127.0.0.5", port: int = 22) -> ServiceInfo:
    name = "peer._claw-clan._tcp.local."
    return ServiceInfo(
        "_claw-clan._tcp.local.", name, port=port, properties=txt, parsed_addresses=[address]
    )


def test_parse_peer_reads_every_field() -> None:
    txt = txt_record(
        {
            "gateway_id": "gw-b",
            "name": "bravo",
            "lead_number": "3",
            "version": "1.2.3",
            "ssh_user": "claw",
            "ssh_port": "2022",
        }
    )
    peer, problems = parse_peer(info(txt, port=2022))
    assert problems == ()
    assert peer is not None
    assert (peer.gateway_id, peer.name, peer.lead_number, peer.ip) == (
        "gw-b",
        "bravo",
        3,
        "127.0.0.5",
    )
    assert (peer.ssh_user, peer.ssh_port, peer.version) == ("claw", 2022, "1.2.3")


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"lead_number": "+5"}, None),
        ({"lead_number": " 5"}, None),
        ({"lead_number": "1_000"}, None),
        ({"lead_number": "\u0661\u0662"}, None),  # Arabic-Indic digits: int() accepts them
        ({"lead_number": "2147483648"}, None),  # beyond the INTEGER column
        ({"lead_number": "2147483647"}, 2147483647),
        ({"lead_number": "007"}, 7),
    ],
)
def test_parse_peer_lead_number(props: dict[str, str], expected: int | None) -> None:
    peer, problems = parse_peer(
        info(txt_record({"gateway_id": "gw", "name": "n", "ssh_user": "u", **props}))
    )
    assert peer is not None
    assert peer.lead_number == expected
    assert bool(problems) == (expected is None)


@pytest.mark.parametrize("gateway_id", ["", ".", "..", "a/b", "a\\b", " gw", "gw\x00", "g" * 201])
def test_parse_peer_rejects_unsafe_gateway_ids(gateway_id: str) -> None:
    peer, problems = parse_peer(info(txt_record({"gateway_id": gateway_id})))
    assert peer is None
    assert problems


def test_parse_peer_prefers_ipv4_and_falls_back_to_txt_port() -> None:
    txt = txt_record({"gateway_id": "gw", "ssh_user": "u", "lead_number": "1", "ssh_port": "2200"})
    peer, _ = parse_peer(info(txt, port=0))
    assert peer is not None
    assert peer.ssh_port == 2200
    peer, _ = parse_peer(info(txt, address="fd00::7"))
    assert peer is not None
    assert peer.ip == "fd00::7"


def test_own_record_fits_dns_limits() -> None:
    long_id = "ü" * 120  # 240 bytes: too long for one DNS label, fine as a TXT value
    assert len(instance_label(long_id).encode()) <= 63
    assert instance_label(long_id) != instance_label(long_id[:-1])
    assert instance_label("gw-a") == "gw-a"
    assert instance_label("gw-a", 2) == "gw-a-2"
    assert len(instance_label(long_id, 9).encode()) <= 63
    assert instance_label(long_id, 9).endswith("-9")
    assert len(instance_label("a" * 63, 2).encode()) <= 63
    record = own_service_info(me(long_id), "_claw-clan._tcp.local.")
    assert record.decoded_properties["gateway_id"] == long_id
    with pytest.raises(ClawdError, match="not an IP address"):
        own_service_info(me(ip=None), "_claw-clan._tcp.local.")
    with pytest.raises(ClawdError, match="gateway_id is too long"):
        own_service_info(me("é" * 200), "_claw-clan._tcp.local.")
