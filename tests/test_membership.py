"""Membership with a fake `verify` and a fake view: announcements are hints until proven."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from structlog.testing import capture_logs

from clawd.config.load import settings_from_data
from clawd.config.sections import DiscoverySettings
from clawd.config.settings import Settings
from clawd.core.errors import ConfigError
from clawd.core.model import Instance, utcnow
from clawd.core.observations import MdnsGone, MdnsSeen, Observation, PeerProof
from clawd.core.trust import Trust
from clawd.sources.mdns_peer import peer_summary
from clawd.sources.membership import KnownPeer, Membership

pytestmark = pytest.mark.timeout(20)

INTERVAL = 0.05  # ping interval: backoff 0.05, 0.1, 0.2 s
WAIT = 5.0


def inst(gid: str, ip: str = "127.0.1.1", port: int = 22, user: str = "claw") -> Instance:
    return Instance(gid, gid, 10, ip, ssh_user=user, ssh_port=port)


def proof(gid: str | None, trust: Trust = Trust.FIRST_USE) -> PeerProof:
    return PeerProof(trust, "SHA256:x", gid, 10)


class Fakes:
    """The keeper side (what was emitted, the view) and an SSH verifier that records calls."""

    def __init__(self) -> None:
        self.emitted: list[Observation] = []
        self.view: dict[str, KnownPeer] = {}
        self.calls: list[Instance] = []
        self.answer: Callable[[Instance], PeerProof | None] = lambda i: None
        self.gate: asyncio.Event | None = None  # set: verifications wait for it
        self.in_flight = 0
        self.max_in_flight = 0

    def emit(self, observation: Observation) -> None:
        self.emitted.append(observation)

    def known(self, gid: str) -> KnownPeer | None:
        return self.view.get(gid)

    async def verify(self, instance: Instance) -> PeerProof | None:
        self.calls.append(instance)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            return self.answer(instance)
        finally:
            self.in_flight -= 1

    def seen(self) -> list[MdnsSeen]:
        return [o for o in self.emitted if isinstance(o, MdnsSeen)]


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


def membership(fakes: Fakes, *, max_unverified: int = 256, attempts: int = 3) -> Membership:
    settings = DiscoverySettings(max_unverified=max_unverified, verify_attempts=attempts)
    return Membership(
        "gw-self",
        settings,
        INTERVAL,
        emit=fakes.emit,
        verify=fakes.verify,
        known=fakes.known,
    )


@asynccontextmanager
async def running(m: Membership) -> AsyncIterator[Membership]:
    ready = asyncio.Event()
    task = asyncio.create_task(m.run(ready))
    async with asyncio.timeout(WAIT):
        await ready.wait()
    try:
        yield m
    finally:
        m.stop()
        async with asyncio.timeout(WAIT):
            await task


async def until(done: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_proven_announcement_reaches_the_keeper_with_its_proof(fakes: Fakes) -> None:
    fakes.answer = lambda i: proof(i.gateway_id)
    async with running(membership(fakes)) as m:
        with capture_logs() as logs:
            m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
            await until(lambda: bool(fakes.emitted))
        assert m.unverified() == []
    [seen] = fakes.seen()
    assert peer_summary(seen.instance) == peer_summary(inst("gw-a")) and seen.proof == proof("gw-a")
    assert len(events(logs, "mdns_peer_verified")) == 1


async def test_an_unproven_announcement_is_never_emitted_and_tried_a_bounded_number_of_times(
    fakes: Fakes,
) -> None:
    # Issue 14 case 7: a peer nobody proved got a peer file, a row and pings forever.
    fakes.answer = lambda i: proof("gw-someone-else")
    async with running(membership(fakes, attempts=3)) as m:
        with capture_logs() as logs:
            m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
            await until(lambda: len(fakes.calls) == 3)
            await asyncio.sleep(INTERVAL * 16)  # twice the last backoff: no fourth try
        [held] = m.unverified()
    assert len(fakes.calls) == 3
    assert fakes.emitted == []
    assert (held.gateway_id, held.address, held.attempts) == ("gw-a", "127.0.1.1:22", 3)
    assert held.last_error == "its state.json names gw-someone-else"
    [line] = events(logs, "mdns_peer_unverified")
    assert line["reason"] == "its state.json names gw-someone-else"


async def test_a_trust_of_none_proves_nothing(fakes: Fakes) -> None:
    fakes.answer = lambda i: proof(i.gateway_id, Trust.NONE)
    async with running(membership(fakes, attempts=1)) as m:
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
        await until(lambda: m.unverified()[0].last_error is not None)
        assert m.unverified()[0].last_error == "host key not trusted"
    assert fakes.emitted == []


async def test_a_changed_record_earns_one_more_try(fakes: Fakes) -> None:
    async with running(membership(fakes, attempts=1)) as m:
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
        await until(lambda: m.unverified()[0].last_error is not None)
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))  # the same record: nothing new
        await asyncio.sleep(INTERVAL * 4)
        assert len(fakes.calls) == 1
        fakes.answer = lambda i: proof(i.gateway_id)
        m.offer(MdnsSeen(inst("gw-a", ip="127.0.1.2"), at=utcnow()))
        await until(lambda: bool(fakes.emitted))
    assert [c.ip for c in fakes.calls] == ["127.0.1.1", "127.0.1.2"]
    assert fakes.seen()[0].instance.ip == "127.0.1.2"


async def test_at_most_max_unverified_are_held_and_the_limit_is_logged_once(
    fakes: Fakes,
) -> None:
    fakes.gate = asyncio.Event()  # verifications hang: every candidate stays held
    async with running(membership(fakes, max_unverified=5)) as m:
        with capture_logs() as logs:
            for n in range(20):
                m.offer(MdnsSeen(inst(f"gw-{n}"), at=utcnow()))
            assert [u.gateway_id for u in m.unverified()] == [f"gw-{n}" for n in range(5)]
            m.offer(MdnsGone("gw-0", at=utcnow()))  # below the limit again: one more fits
            m.offer(MdnsSeen(inst("gw-late"), at=utcnow()))
            m.offer(MdnsSeen(inst("gw-later"), at=utcnow()))
        assert len(m.unverified()) == 5 and "gw-late" in {u.gateway_id for u in m.unverified()}
    assert len(events(logs, "mdns_unverified_limit")) == 2  # once per time at the limit
    assert fakes.emitted == []


async def test_spent_candidates_make_room_for_a_new_announcement(fakes: Fakes) -> None:
    # A flood that never says goodbye: its candidates are tried and spent; a real peer
    # announced afterwards still gets its chance (it is not dropped at the limit).
    async with running(membership(fakes, max_unverified=3, attempts=1)) as m:
        for n in range(3):
            m.offer(MdnsSeen(inst(f"junk-{n}"), at=utcnow()))
        await until(lambda: all(u.last_error is not None for u in m.unverified()))
        fakes.answer = lambda i: proof(i.gateway_id) if i.gateway_id == "gw-real" else None
        m.offer(MdnsSeen(inst("gw-real"), at=utcnow()))
        await until(lambda: bool(fakes.emitted))
        held = [u.gateway_id for u in m.unverified()]
    assert [s.instance.gateway_id for s in fakes.seen()] == ["gw-real"]
    assert held == ["junk-1", "junk-2"]  # the oldest spent one made room
    assert len(held) <= 3


async def test_a_withdrawn_candidate_is_forgotten_at_once(fakes: Fakes) -> None:
    fakes.gate = asyncio.Event()
    async with running(membership(fakes)) as m:
        for n in range(10):
            m.offer(MdnsSeen(inst(f"gw-{n}"), at=utcnow()))
        await until(lambda: len(fakes.calls) >= 8)
        for n in range(10):
            m.offer(MdnsGone(f"gw-{n}", at=utcnow()))
        assert m.unverified() == []
        fakes.gate.set()
        await until(lambda: fakes.in_flight == 0)
    assert fakes.emitted == []  # neither the proofs in flight nor the goodbyes


async def test_verifications_run_at_most_eight_at_a_time(fakes: Fakes) -> None:
    fakes.gate = asyncio.Event()
    fakes.answer = lambda i: proof(i.gateway_id)
    async with running(membership(fakes)) as m:
        for n in range(50):
            m.offer(MdnsSeen(inst(f"gw-{n}", ip=f"127.0.2.{n}"), at=utcnow()))
        await until(lambda: fakes.in_flight == 8)
        await asyncio.sleep(0.1)
        assert fakes.in_flight == 8
        fakes.gate.set()
        await until(lambda: len(fakes.seen()) == 50)
    assert fakes.max_in_flight == 8


async def test_a_static_peers_address_is_never_moved(fakes: Fakes) -> None:
    # Issue 14 case 3: an announcement of a static peer's id re-pointed the pings.
    fakes.view["gw-s"] = KnownPeer(verified=True, static=True, ip="127.0.1.1", port=22, user=None)
    fakes.answer = lambda i: proof(i.gateway_id)  # even a "proof" does not move it
    async with running(membership(fakes)) as m:
        with capture_logs() as logs:
            for _ in range(3):
                m.offer(MdnsSeen(inst("gw-s", ip="127.0.9.9"), at=utcnow()))
            await asyncio.sleep(INTERVAL * 4)
            m.offer(MdnsGone("gw-s", at=utcnow()))  # the refused claim's goodbye: not news
        assert m.unverified() == []
    assert fakes.emitted == [] and fakes.calls == []
    [line] = events(logs, "mdns_address_conflict")
    assert (line["known_address"], line["announced_address"]) == ("127.0.1.1:22", "127.0.9.9:22")


async def test_a_known_id_at_another_address_moves_only_when_proven(fakes: Fakes) -> None:
    # Issue 14 case 3 for a discovered peer: the new address must prove the pinned key.
    fakes.view["gw-a"] = KnownPeer(
        verified=True, static=False, ip="127.0.1.1", port=22, user="claw"
    )
    async with running(membership(fakes, attempts=2)) as m:
        with capture_logs() as logs:
            for _ in range(3):
                m.offer(MdnsSeen(inst("gw-a", ip="127.0.9.9"), at=utcnow()))
            await until(lambda: len(fakes.calls) == 2)
            await asyncio.sleep(INTERVAL * 8)
        assert fakes.emitted == []
        [line] = events(logs, "mdns_address_conflict")
        assert (line["known_address"], line["announced_address"]) == (
            "127.0.1.1:22",
            "127.0.9.9:22",
        )
        fakes.answer = lambda i: proof(i.gateway_id)
        m.offer(MdnsSeen(inst("gw-a", ip="127.0.9.8"), at=utcnow()))
        await until(lambda: bool(fakes.emitted))
    [seen] = fakes.seen()
    assert seen.instance.ip == "127.0.9.8" and seen.proof is not None


async def test_a_verified_peer_at_its_address_passes_as_a_hint(fakes: Fakes) -> None:
    fakes.view["gw-a"] = KnownPeer(
        verified=True, static=False, ip="127.0.1.1", port=22, user="claw"
    )
    async with running(membership(fakes)) as m:
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
        m.offer(MdnsSeen(inst("gw-self"), at=utcnow()))  # our own id: dropped
        m.offer(MdnsGone("gw-a", at=utcnow()))
        m.offer(MdnsGone("gw-unknown", at=utcnow()))
        await asyncio.sleep(INTERVAL * 2)
    assert fakes.calls == []
    assert [type(o).__name__ for o in fakes.emitted] == ["MdnsSeen", "MdnsGone"]
    assert fakes.seen()[0].proof is None


async def test_an_unverified_known_peer_is_a_candidate(fakes: Fakes) -> None:
    fakes.view["gw-a"] = KnownPeer(verified=False, static=False, ip="127.0.1.1", port=22, user=None)
    fakes.answer = lambda i: proof(i.gateway_id)
    async with running(membership(fakes)) as m:
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
        await until(lambda: bool(fakes.emitted))
    assert len(fakes.calls) == 1 and fakes.seen()[0].proof is not None


async def test_a_lowered_maximum_lets_go_of_the_newest(fakes: Fakes) -> None:
    fakes.gate = asyncio.Event()
    async with running(membership(fakes, max_unverified=10)) as m:
        for n in range(10):
            m.offer(MdnsSeen(inst(f"gw-{n}"), at=utcnow()))
        settings = Settings(discovery=DiscoverySettings(max_unverified=4))
        await m.reconfigure(settings, frozenset({"discovery", "discovery.maxUnverified"}))
        assert [u.gateway_id for u in m.unverified()] == [f"gw-{n}" for n in range(4)]


async def test_a_verifier_that_raises_is_a_failed_attempt(fakes: Fakes) -> None:
    def broken(instance: Instance) -> PeerProof | None:
        raise OSError("connection refused\nby 127.0.1.1")

    fakes.answer = broken
    async with running(membership(fakes, attempts=1)) as m:
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
        await until(lambda: m.unverified()[0].last_error is not None)
        assert m.unverified()[0].last_error == "connection refused by 127.0.1.1"
    assert fakes.emitted == []


async def test_a_proof_for_an_address_announced_away_meanwhile_is_not_used(fakes: Fakes) -> None:
    fakes.gate = asyncio.Event()
    fakes.answer = lambda i: proof(i.gateway_id)
    async with running(membership(fakes, attempts=1)) as m:
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
        await until(lambda: fakes.in_flight == 1)
        m.offer(MdnsSeen(inst("gw-a", ip="127.0.1.2"), at=utcnow()))
        fakes.gate.set()
        await until(lambda: bool(fakes.emitted))
    assert [c.ip for c in fakes.calls] == ["127.0.1.1", "127.0.1.2"]
    [seen] = fakes.seen()
    assert seen.instance.ip == "127.0.1.2"


async def test_a_peer_proven_a_moment_ago_is_not_checked_again(fakes: Fakes) -> None:
    fakes.answer = lambda i: proof(i.gateway_id)
    async with running(membership(fakes)) as m:
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))
        await until(lambda: bool(fakes.emitted))
        m.offer(MdnsSeen(inst("gw-a"), at=utcnow()))  # before the keeper took the first in
        await asyncio.sleep(INTERVAL * 2)
    assert len(fakes.calls) == 1
    assert [s.proof is None for s in fakes.seen()] == [False, True]


def test_the_limits_are_settings_with_one_line_errors() -> None:
    settings = settings_from_data({}, {})
    assert (settings.discovery.max_unverified, settings.discovery.verify_attempts) == (256, 3)
    with pytest.raises(ConfigError) as info:
        settings_from_data({"discovery": {"maxUnverified": 0}}, {})
    assert "discovery.maxUnverified: 0 is too small (minimum 1)" in str(info.value).splitlines()[-1]
