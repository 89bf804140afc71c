"""Membership: mDNS announcements are bounded hints until an SSH connection proves them.

Anyone on the LAN may announce anything, so Discovery's observations pass through here
before the keeper sees them. An announcement of a peer the keeper already verified at the
same address goes on as a hint. Any other one (a new gateway id, or a known id at another
address) is a candidate: at most `discovery.maxUnverified` are held, each is checked over
SSH (`verify`) at most `discovery.verifyAttempts` times, a few at a time, and only a proven
one reaches the keeper, with its proof. Static peers are never moved by mDNS.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import structlog

from clawd.config.sections import DiscoverySettings
from clawd.config.settings import Settings
from clawd.core.model import Instance, utcnow
from clawd.core.observations import MdnsGone, MdnsSeen, Observation, PeerProof
from clawd.core.ratelog import LogLimiter
from clawd.core.text import clean_text
from clawd.sources.mdns_peer import peer_summary

log = structlog.get_logger("clawd.sources.membership")

# Verifications in flight at once: 500 announcements must not open 500 SSH connections
# (OpenSSH's MaxStartups drops new connections beyond 10 by default).
MAX_CONCURRENT_VERIFICATIONS = 8
MAX_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class KnownPeer:
    """What the keeper's view says about a gateway id (None from `known`: not a peer)."""

    verified: bool  # proven over SSH in this run
    static: bool  # from config.json's `peers`: its address is the operator's
    ip: str | None
    port: int
    user: str | None  # None: the default user


class UnverifiedPeer(NamedTuple):
    """One held announcement, for `clawd status`."""

    gateway_id: str
    address: str  # "ip:port" as announced
    since: datetime
    attempts: int
    last_error: str | None


Verify = Callable[[Instance], Awaitable[PeerProof | None]]
Known = Callable[[str], KnownPeer | None]


@dataclass(slots=True)
class _Candidate:
    instance: Instance
    since: datetime
    moving_from: str | None  # the known peer's address, when this would move it
    budget: int  # attempts allowed so far
    attempts: int = 0
    due: float = 0.0  # loop time of the next attempt
    last_error: str | None = None
    logged: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def address(instance: Instance) -> str:
    return f"{instance.ip}:{instance.ssh_port}"


def _same_place(known: KnownPeer, instance: Instance) -> bool:
    return (
        known.ip == instance.ip
        and known.port == instance.ssh_port
        and (known.user is None or known.user == instance.ssh_user)
    )


def _reason(gateway_id: str, proof: PeerProof | None) -> str:
    if proof is None:
        return "no proof (SSH failed or state.json unreadable)"
    if proof.gateway_id != gateway_id:
        named = clean_text(proof.gateway_id) if proof.gateway_id else "no gateway id"
        return f"its state.json names {named}"
    return "host key not trusted"


class Membership:
    """Between Discovery and the keeper: `offer()` each mDNS observation; see the module doc.

    One-shot: `run()` once; `stop()` cancels verifications in flight and makes it return.
    """

    name = "membership"

    def __init__(
        self,
        own_gateway_id: str,
        settings: DiscoverySettings,
        interval_seconds: float,
        *,
        emit: Callable[[Observation], None],
        verify: Verify,
        known: Known,
        concurrency: int = MAX_CONCURRENT_VERIFICATIONS,
    ) -> None:
        self._own = own_gateway_id
        self._max = settings.max_unverified
        self._attempts = settings.verify_attempts
        self._interval = interval_seconds
        self._emit = emit
        self._verify = verify
        self._known = known
        self._concurrency = concurrency
        self._candidates: dict[str, _Candidate] = {}  # unknown ids (bounded by _max)
        self._moves: dict[str, _Candidate] = {}  # known ids at another address
        self._in_flight = 0
        # Ids whose announcement reached the keeper, and the address it had then.
        self._passed: dict[str, str] = {}
        self._at_limit = False
        self._conflicts = LogLimiter(math.inf)  # (gid, address) logged once each
        self._wake = asyncio.Event()
        self._stopping = False
        self._tg: asyncio.TaskGroup | None = None

    # ---- the component ----------------------------------------------------------------

    async def run(self, ready: asyncio.Event) -> None:
        """Verify held candidates when due; set `ready` at once; return after stop()."""
        if self._tg is not None:
            raise RuntimeError("Membership.run() is already running")
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                ready.set()
                while not self._stopping:
                    delay = self._start_due(tg)
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                for held in self._held():
                    if held.task is not None:
                        held.task.cancel()
        finally:
            self._tg = None

    def stop(self) -> None:
        """Ask run() to return (idempotent)."""
        self._stopping = True
        self._wake.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """New limits apply at once; a lowered maximum lets go of the newest candidates."""
        self._max = settings.discovery.max_unverified
        self._attempts = settings.discovery.verify_attempts
        self._interval = settings.ping.interval_seconds
        while len(self._candidates) > self._max:
            gid = next(reversed(self._candidates))
            self._drop(self._candidates, gid)
        if len(self._candidates) < self._max:
            self._at_limit = False
        self._wake.set()

    def unverified(self) -> list[UnverifiedPeer]:
        """The announcements held until proven, oldest first."""
        return [
            UnverifiedPeer(gid, address(c.instance), c.since, c.attempts, c.last_error)
            for held in (self._moves, self._candidates)
            for gid, c in held.items()
        ]

    # ---- what Discovery reports -------------------------------------------------------

    def offer(self, observation: Observation) -> None:
        """Take one of Discovery's observations; pass on what the keeper may see."""
        if isinstance(observation, MdnsSeen):
            self._seen(observation)
        elif isinstance(observation, MdnsGone):
            self._gone(observation)
        else:
            self._emit(observation)  # not an announcement: none of membership's business

    def _seen(self, seen: MdnsSeen) -> None:
        instance = seen.instance
        gid = instance.gateway_id
        if gid == self._own:
            return
        known = self._known(gid)
        if known is None and self._passed.get(gid) == address(instance):
            # Proven a moment ago; the keeper has not taken it in yet: no second check.
            self._pass(MdnsSeen(instance, at=seen.at))
            return
        if known is not None and _same_place(known, instance):
            self._drop(self._moves, gid)
            if known.verified or known.static:
                self._pass(MdnsSeen(instance, at=seen.at))  # a hint: proves nothing
                return
        if known is not None and known.ip is not None and not _same_place(known, instance):
            self._drop(self._candidates, gid)
            if known.static:  # the operator's address: mDNS never moves it
                self._drop(self._moves, gid)
                self._conflict(gid, f"{known.ip}:{known.port}", instance, "static peer")
                return
            if known.verified:  # moved only once the new address proves the pinned key
                self._hold(self._moves, instance, moving_from=f"{known.ip}:{known.port}")
                return
        self._drop(self._moves, gid)
        full = gid not in self._candidates and len(self._candidates) >= self._max
        if full and not self._evict_spent():
            if not self._at_limit:
                self._at_limit = True
                log.warning("mdns_unverified_limit", held=len(self._candidates), dropped=gid)
            return
        self._hold(self._candidates, instance, moving_from=None)

    def _gone(self, gone: MdnsGone) -> None:
        gid = gone.gateway_id
        self._drop(self._moves, gid)
        if self._drop(self._candidates, gid):
            return  # never proven: forgotten, the keeper never heard of it
        if self._passed.pop(gid, None) is not None:  # not the goodbye of a refused claim
            self._emit(gone)

    def _pass(self, seen: MdnsSeen) -> None:
        self._passed[seen.instance.gateway_id] = address(seen.instance)
        self._emit(seen)

    # ---- candidates -------------------------------------------------------------------

    def _held(self) -> list[_Candidate]:
        return [*self._moves.values(), *self._candidates.values()]

    def _hold(
        self, held: dict[str, _Candidate], instance: Instance, *, moving_from: str | None
    ) -> None:
        gid = instance.gateway_id
        candidate = held.get(gid)
        if candidate is None:
            held[gid] = _Candidate(instance, utcnow(), moving_from, budget=self._attempts)
            self._wake.set()
            return
        candidate.moving_from = moving_from
        if peer_summary(candidate.instance) != peer_summary(instance):
            # A fresh record earns one more try, still at the backoff's pace (a flood of
            # changed records cannot make SSH connections any faster).
            candidate.instance = instance
            candidate.budget = max(candidate.budget, candidate.attempts + 1)
            self._wake.set()

    def _evict_spent(self) -> bool:
        """Make room for a new announcement by letting go of the oldest candidate whose
        attempts are spent: it had its chances, and a flood that never says goodbye must
        not keep a real new peer out. False when every held one may still be proven."""
        for gid, candidate in self._candidates.items():
            if candidate.task is None and candidate.attempts >= candidate.budget:
                self._drop(self._candidates, gid)
                return True  # the loop ends here: the dict changed under it
        return False

    def _drop(self, held: dict[str, _Candidate], gid: str) -> bool:
        candidate = held.pop(gid, None)
        if candidate is None:
            return False
        if candidate.task is not None:
            candidate.task.cancel()
        if held is self._candidates and len(self._candidates) < self._max:
            self._at_limit = False
        return True

    def _start_due(self, tg: asyncio.TaskGroup) -> float | None:
        """Start the verifications that are due (within the concurrency bound); return the
        seconds until the next one is due (None: nothing waits on time)."""
        now = asyncio.get_running_loop().time()
        next_due: float | None = None
        for candidate in self._held():
            if candidate.task is not None or candidate.attempts >= candidate.budget:
                continue
            if candidate.due > now:
                next_due = candidate.due if next_due is None else min(next_due, candidate.due)
                continue
            if self._in_flight >= self._concurrency:
                break  # a finishing verification wakes run()
            self._in_flight += 1
            candidate.attempts += 1  # counted as it starts: a fresh record then earns one more
            candidate.task = tg.create_task(
                self._check(candidate), name=f"verify {candidate.instance.gateway_id}"
            )
        return None if next_due is None else next_due - now

    async def _check(self, candidate: _Candidate) -> None:
        instance = candidate.instance
        try:
            try:
                proof = await self._verify(instance)
                error = None
            except Exception as exc:  # a peer's failure is a result, never the daemon's end
                proof, error = None, " ".join(str(exc).split())[:MAX_ERROR_CHARS] or repr(exc)
        finally:
            self._in_flight -= 1
            candidate.task = None
            self._wake.set()
        self._result(candidate, instance, proof, error)

    def _result(
        self, candidate: _Candidate, instance: Instance, proof: PeerProof | None, error: str | None
    ) -> None:
        gid = instance.gateway_id
        held = self._moves if candidate.moving_from is not None else self._candidates
        if held.get(gid) is not candidate:
            return  # withdrawn (or turned into the other kind) meanwhile
        moved_meanwhile = address(candidate.instance) != address(instance)
        if proof is not None and proof.proves(gid) and not moved_meanwhile:
            del held[gid]
            if held is self._candidates and len(self._candidates) < self._max:
                self._at_limit = False
            log.info(
                "mdns_peer_verified",
                gateway=gid,
                address=address(instance),
                trust=str(proof.trust),
                moved_from=candidate.moving_from,
            )
            self._pass(MdnsSeen(instance, at=utcnow(), proof=proof))
            return
        if moved_meanwhile:  # the proof was for the old address; the new record earned a try
            error = "announced at another address while being verified"
        candidate.last_error = error or _reason(gid, proof)
        candidate.due = asyncio.get_running_loop().time() + self._interval * 2 ** (
            candidate.attempts - 1
        )
        if candidate.logged:
            return
        candidate.logged = True
        if candidate.moving_from is not None:
            self._conflict(gid, candidate.moving_from, instance, candidate.last_error)
        else:
            log.warning(
                "mdns_peer_unverified",
                gateway=gid,
                address=address(instance),
                reason=candidate.last_error,
                attempts_left=max(0, candidate.budget - candidate.attempts),
            )

    def _conflict(self, gid: str, known_at: str, instance: Instance, reason: str) -> None:
        """Log a known id announced at another address: once per (gateway id, address)."""
        if self._conflicts.fresh((gid, address(instance)), 0.0):
            log.warning(
                "mdns_address_conflict",
                gateway=gid,
                known_address=known_at,
                announced_address=address(instance),
                reason=reason,
            )
