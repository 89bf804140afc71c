"""The fresh mDNS question (clawd/sources/mdns_query.py) and its asker, over real zeroconf
traffic on loopback: only a running announcer answers; a record in a cache never does."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from mdnspeers import MdnsPeers, claw_peer
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from clawd.config.sections import DiscoverySettings, PingSettings
from clawd.core.observations import MdnsFresh, MdnsQuery, Observation
from clawd.sources import mdns_query
from clawd.sources.mdns_ask import MdnsAsker
from clawd.sources.mdns_query import instance_answers, is_answer, query_packet

pytestmark = pytest.mark.timeout(60)

LOOPBACK = ("127.0.0.1",)


def service_type() -> str:
    return f"_q{secrets.token_hex(3)}._tcp.local."


@pytest.fixture
async def responder() -> AsyncIterator[tuple[str, str]]:
    """An announcer in this process: (its instance name, the address it announces)."""
    kind = service_type()
    name = f"gw-b.{kind}"
    info = AsyncServiceInfo(
        kind, name, port=2222, properties={"gateway_id": "gw-b"}, server=name,
        parsed_addresses=["127.0.0.7"],
    )  # fmt: skip
    async with AsyncZeroconf(interfaces=list(LOOPBACK)) as aiozc:
        await (await aiozc.async_register_service(info))
        yield name, "127.0.0.7"


async def test_a_running_announcer_answers_at_once(responder: tuple[str, str]) -> None:
    name, ip = responder
    for interfaces in (LOOPBACK, None):  # configured, or the route to the peer's address
        started = time.monotonic()
        assert await instance_answers((name,), ip, interfaces, 1.0)
        took = time.monotonic() - started
        print(f"answered in {took * 1000:.1f} ms (interfaces {interfaces})")
        assert took < 0.5  # milliseconds here; a margin for a busy 2-core box


async def test_no_answer_for_another_instance_or_another_address(
    responder: tuple[str, str],
) -> None:
    name, ip = responder
    other = name.replace("gw-b.", "gw-c.")
    assert not await instance_answers((other,), ip, LOOPBACK, 0.3)
    assert not await instance_answers((name,), "127.0.0.8", LOOPBACK, 0.3)  # elsewhere


async def test_ten_queries_in_a_second_are_all_answered(responder: tuple[str, str]) -> None:
    """No one-per-second multicast limit and no known-answer suppression hold an answer
    back: a legacy unicast query is answered straight back, each time."""
    name, ip = responder
    answers = [await instance_answers((name,), ip, LOOPBACK, 1.0) for _ in range(10)]
    assert all(answers)


def test_a_query_is_no_answer() -> None:
    assert not is_answer(query_packet(["gw-b._x._tcp.local."], 7), 7, ["gw-b._x._tcp.local."], None)


async def test_the_multicast_copy_answers_where_a_firewall_drops_the_unicast_reply(
    responder: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host firewall that admits only UDP 5353 drops the reply to our own port; the
    responder's multicast copy reaches clawd's zeroconf (here: one of the test's)."""
    name, ip = responder
    monkeypatch.setattr(mdns_query._Replies, "datagram_received", lambda *args: None)
    async with AsyncZeroconf(interfaces=list(LOOPBACK)) as ours:
        # The multicast copy waits while the record went out less than a second ago
        # (RFC 6762 section 6): past the responder's own announcements first.
        await asyncio.sleep(1.5)
        assert await instance_answers((name,), ip, LOOPBACK, 1.0, ours.zeroconf)
        assert not await instance_answers((name,), "127.0.0.8", LOOPBACK, 0.5, ours.zeroconf)
    assert not await instance_answers((name,), ip, LOOPBACK, 0.5)  # the unicast path is cut


async def test_a_cached_record_of_a_killed_announcer_gets_no_answer() -> None:
    """The power-off: the announcer is SIGKILLed (no goodbye); a browser here still holds
    its record, and the query still gets no answer."""
    kind = service_type()
    found = asyncio.Event()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added:
            found.set()

    peer = claw_peer("gw-k", ip="127.0.0.9", ssh_port=2222)
    name = f"gw-k.{kind}"
    async with AsyncZeroconf(interfaces=list(LOOPBACK)) as aiozc:
        browser = AsyncServiceBrowser(aiozc.zeroconf, [kind], handlers=[on_change])
        announcer = MdnsPeers(kind, [peer])
        await announcer.start()
        try:
            async with asyncio.timeout(10):
                await found.wait()
            assert await instance_answers((name,), "127.0.0.9", LOOPBACK, 1.0)
            announcer.kill()
            await announcer.proc.wait()
            cached = AsyncServiceInfo(kind, name)
            assert await cached.async_request(aiozc.zeroconf, 200)  # from the cache at once
            assert not await instance_answers((name,), "127.0.0.9", LOOPBACK, 1.0, aiozc.zeroconf)
        finally:
            await browser.async_cancel()
            await announcer.aclose()


class Announced:
    """What Discovery would know: the names announcing each gateway id; no zeroconf."""

    def __init__(self, names: dict[str, tuple[str, ...]]) -> None:
        self.names = names

    def service_names(self, gateway_id: str) -> tuple[str, ...]:
        return self.names.get(gateway_id, ())

    def zeroconf(self) -> Zeroconf | None:
        return None


async def test_the_asker_sends_one_query_per_peer_and_round(responder: tuple[str, str]) -> None:
    name, ip = responder
    heard: list[Observation] = []
    ping = PingSettings(interval_seconds=1.0, timeout_seconds=0.5, jitter_fraction=0.1)
    asker = MdnsAsker(
        ping, DiscoverySettings(interfaces=LOOPBACK), Announced({"gw-b": (name,)}), heard.append
    )
    ready = asyncio.Event()
    task = asyncio.create_task(asker.run(ready))
    await ready.wait()
    try:
        for _ in range(5):  # five asks at once: one query
            asker.ask(MdnsQuery("gw-b", ip))
        asker.ask(MdnsQuery("gw-gone", "127.0.0.3"))  # nobody announces it: no at once
        async with asyncio.timeout(5):
            while len(heard) < 2:
                await asyncio.sleep(0.01)
        assert asker.queries == 1
        answers = {o.gateway_id: o.answered for o in heard if isinstance(o, MdnsFresh)}
        assert answers == {"gw-b": True, "gw-gone": False}
        await asyncio.sleep(1.0)  # the next round
        asker.ask(MdnsQuery("gw-b", ip))
        async with asyncio.timeout(5):
            while len(heard) < 3:
                await asyncio.sleep(0.01)
        assert asker.queries == 2
    finally:
        asker.stop()
        async with asyncio.timeout(5):
            await task
