"""Who probes whom: each machine is probed by k observers, not by all N-1 others.

Rendezvous (highest-random-weight) hashing: observer `o` scores target `t` with a hash of
the pair; a target's observers are the k members with the highest scores. Every machine
computes the same answer from the same members with no coordination, and when a member
leaves only the targets it observed get a new observer (the next-highest score) -- the
others keep theirs, so their evidence streams are not reset.

The members are the machines running clawd on the shared database (lease sessions) that
are verified and that the fleet does not call down, this one included: what the shared
record says is the same on every machine, so their assignments agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

from clawd.core.lock_ids import lease_session_name
from clawd.core.model import PeerStatus
from clawd.decide.view import Assignment, FleetView

_MASK = (1 << 64) - 1


@lru_cache(maxsize=65_536)
def _seed(gateway_id: str) -> int:
    """A gateway id's 64-bit hash (computed once per id: scoring is then arithmetic)."""
    return int.from_bytes(hashlib.blake2b(gateway_id.encode(), digest_size=8).digest(), "big")


def score(observer: str, target: str) -> int:
    """The pair's weight: splitmix64's finaliser over both ids' hashes (well spread, cheap:
    an assignment over 1,000 members scores 10^6 pairs)."""
    z = (_seed(observer) * 0x9E3779B97F4A7C15 + _seed(target)) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def observers_of(target: str, members: Iterable[str], k: int) -> tuple[str, ...]:
    """The k members (never the target itself) that probe `target`, highest score first."""
    ranked = sorted((m for m in members if m != target), key=lambda m: (-score(m, target), m))
    return tuple(ranked[:k])


def probed_by(me: str, targets: Iterable[str], members: frozenset[str], k: int) -> frozenset[str]:
    """The targets `me` is one of the k observers of."""
    mine: set[str] = set()
    for target in targets:
        if target == me:
            continue
        own = score(me, target)
        # Members that outrank me for this target; k of them and it is not mine.
        above = 0
        for member in members:
            if member in (me, target):
                continue
            theirs = score(member, target)
            if theirs > own or (theirs == own and member < me):
                above += 1
                if above >= k:
                    break
        if above < k:
            mine.add(target)
    return frozenset(mine)


def members(view: FleetView) -> frozenset[str]:
    """The machines that observe: this one, and the verified peers that run clawd on the
    shared database (a lease session) and that the fleet does not call down (its verdict
    where there is one, this machine's own status where there is none yet). A peer that
    does not run clawd is probed, never a prober."""
    up = {view.me.gateway_id}
    sessions = view.sessions or frozenset()
    for gid, record in view.peers.items():
        if not record.verified or lease_session_name(gid) not in sessions:
            continue
        verdict = view.verdicts.get(gid)
        if verdict is None:
            if record.state.status is not PeerStatus.OFFLINE:
                up.add(gid)
        elif verdict.up:
            up.add(gid)
    return frozenset(up)


def assign(view: FleetView, k: int) -> Assignment:
    """This machine's share of the verified peers (a down one too: its observers see it come
    back); the previous assignment when its members and peers are the same."""
    now = members(view)
    verified = frozenset(g for g, r in view.peers.items() if r.verified)
    old = view.assignment
    if old is not None and (old.members, old.targets, old.k) == (now, verified, k):
        return old
    return Assignment(now, verified, k, probed_by(view.me.gateway_id, verified, now, k))
