"""Membership fed by real Discovery; peers announced over loopback mDNS by another process."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from mdnspeers import MdnsPeers, claw_peer
from structlog.testing import capture_logs

from clawd.config.sections import DiscoverySettings
from clawd.core.model import Instance
from clawd.core.observations import Observation, PeerProof
from clawd.sources.discovery import Discovery
from clawd.sources.membership import KnownPeer, Membership

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0  # 300 services: about 1 s of probing in the announcer, then 300 resolutions here
INTERVAL = 10.0  # ping interval: no second attempt within a test


class Keeper:
    """What reached the keeper, and the view membership reads."""

    def __init__(self) -> None:
        self.emitted: list[Observation] = []
        self.view: dict[str, KnownPeer] = {}
        self.verified: list[str] = []

    def emit(self, observation: Observation) -> None:
        self.emitted.append(observation)

    def known(self, gid: str) -> KnownPeer | None:
        return self.view.get(gid)

    async def verify(self, instance: Instance) -> PeerProof | None:
        self.verified.append(instance.gateway_id)
        await asyncio.sleep(0.01)  # an SSH attempt that fails: nobody proves anything here
        return None


@asynccontextmanager
async def started(component: Discovery | Membership) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(component.run(ready))
    waiter = asyncio.create_task(ready.wait())
    try:
        async with asyncio.timeout(WAIT):
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            await task
        yield
    finally:
        waiter.cancel()
        component.stop()
        async with asyncio.timeout(WAIT):
            await task


@asynccontextmanager
async def membership_over_mdns(
    keeper: Keeper, max_unverified: int
) -> AsyncIterator[tuple[Membership, str]]:
    """Discovery feeding Membership feeding `keeper`; also the service type they browse."""
    settings = DiscoverySettings(
        service_type=f"_clawm-{secrets.token_hex(3)}._tcp.local.",
        interfaces=("127.0.0.1",),
        max_unverified=max_unverified,
    )
    membership = Membership(
        "gw-self",
        settings,
        INTERVAL,
        emit=keeper.emit,
        verify=keeper.verify,
        known=keeper.known,
    )
    me = Instance("gw-self", "self", 1, "127.0.0.1", ssh_user="claw", ssh_port=2222)
    discovery = Discovery(me, settings, membership.offer)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(started(membership))
        await stack.enter_async_context(started(discovery))
        yield membership, settings.service_type


async def until(done: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.02)


async def test_300_announcements_hold_256_and_goodbyes_forget_them() -> None:
    # Issue 14 case 7: 500 announcements and their goodbyes left 503 peer files, pinged forever.
    keeper = Keeper()
    peers = [claw_peer(f"gw-{n}", ip=f"127.0.3.{n % 250 + 1}") for n in range(300)]
    with capture_logs() as logs:
        async with membership_over_mdns(keeper, max_unverified=256) as (membership, service):
            announcer = MdnsPeers(service, peers)
            await announcer.start()
            try:
                await until(lambda: len(membership.unverified()) == 256, WAIT)
                await asyncio.sleep(1.0)  # the other 44 stay out
                assert len(membership.unverified()) == 256
                await until(lambda: len(set(keeper.verified)) == 256, WAIT)
            finally:
                started_at = time.monotonic()
                await announcer.aclose()  # goodbyes for all 300
            closed_after = time.monotonic() - started_at
            await until(lambda: not membership.unverified(), 5.0)
            forgotten_after = time.monotonic() - started_at
    print(f"goodbyes sent in {closed_after:.2f} s; all 256 forgotten after {forgotten_after:.2f} s")
    assert forgotten_after < 1.5  # one second wanted; a margin for a busy 2-core box
    assert keeper.emitted == []  # no peer file, no row, no pings: the keeper never heard
    assert len(keeper.verified) == 256  # one attempt each so far, none for the dropped 44
    assert len([e for e in logs if e["event"] == "mdns_unverified_limit"]) == 1


async def test_a_static_peers_id_at_another_address_changes_nothing() -> None:
    # Issue 14 case 3: announcing a static peer's id at another address re-pointed its pings.
    keeper = Keeper()
    keeper.view["gw-static"] = KnownPeer(
        verified=True, static=True, ip="127.0.1.1", port=22, user="claw"
    )
    rogue = claw_peer("gw-static", ip="127.0.0.66", ssh_port=2222)
    with capture_logs() as logs:
        async with membership_over_mdns(keeper, max_unverified=256) as (membership, service):
            async with MdnsPeers(service, [rogue]):
                await until(lambda: any(e["event"] == "mdns_address_conflict" for e in logs), WAIT)
                await asyncio.sleep(1.5)  # zeroconf's repeated announcements: still one line
            assert membership.unverified() == []
    assert keeper.emitted == [] and keeper.verified == []
    [line] = [e for e in logs if e["event"] == "mdns_address_conflict"]
    assert line["gateway"] == "gw-static"
    assert (line["known_address"], line["announced_address"]) == ("127.0.1.1:22", "127.0.0.66:2222")
