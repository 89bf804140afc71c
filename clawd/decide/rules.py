"""Evidence fusion: what is known about a peer, and the rule table that turns it into a status.

Every source clawd has says something different about a peer: mDNS (does claw-clan's
announcer answer a query for its own instance now? -- its record in a cache is no proof:
it stays there for up to 75 minutes after a power-off), a TCP connect to its SSH port (is
the machine and network there?), the SSH echo (does sshd answer in time?), the failure
detector over its heartbeat history (how unusual is this silence for *this* peer?), other
peers' indirect probes (is it only unreachable from here?), and clawd's view of itself (is
it us that is slow, is it a partition?). :func:`decide` reads them in one fixed order; the
first rule that matches decides, and its name is what `clawd status --why PEER` prints.

In order (first match decides; "held" keeps the current status):

  ssh-ok              last SSH ping ok (after offline: `recoverAfterSuccesses` in a row) -> online
  recovering          answering again after offline, not yet enough pings in a row   -> held
  partitioned         dropped together with many other peers (one partition)         -> unknown
  self-doubt          clawd's own loop stalled, or nearly every peer failed at once  -> held
  mdns-gone           mDNS record withdrawn and the last SSH ping failed             -> offline
  tcp-answers         SSH fails but the SSH port accepts TCP connections             -> unresponsive
  mdns-present        SSH fails, it answered mDNS this round (`mdnsGraceMisses` max) -> unresponsive
  reachable-by-peers  detector says offline, but most peers asked reach it           -> unresponsive
  probing             detector says offline; other peers are probing it now          -> held
  detector-offline    detector says offline and nothing else answers                 -> offline
  suspect             detector suspects it (phi >= phiSuspect, or a missed ping)     -> held
  no-news             nothing new                                                    -> held

A miss or two is not news.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from clawd.core.model import PeerStatus
from clawd.decide.suspicion import Suspicion


class Probes(StrEnum):
    """What the last indirect probe round (other peers probing this one) found."""

    NONE = "none"  # not asked (no failure yet, no helpers, or probes off)
    PENDING = "pending"
    REACHABLE = "reachable"  # more than half of the helpers asked reached it
    UNREACHABLE = "unreachable"  # helpers probed and no majority reached it
    FAILED = "failed"  # no helper could probe


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything the rules look at, for one peer at one moment."""

    status: PeerStatus  # the current status (what "held" keeps)
    last_ping_ok: bool | None  # None: not pinged yet
    ok_streak: int  # successful pings in a row
    missed: int  # failed pings in a row
    tcp_reachable: bool  # the SSH port accepted a connection in the last round
    mdns: bool  # answered an mDNS query for its own instance within the last round
    mdns_cached: bool  # its record is announced (in the cache; proves nothing about now)
    mdns_withdrawn: bool  # was announced, then the record went away
    suspicion: Suspicion
    phi: float
    probes: Probes
    partitioned: bool
    doubting: bool  # clawd doubts itself (self-health guard)
    mdns_grace_misses: int
    recover_after: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, StrEnum):
                out[key] = value.value
        out["phi"] = round(self.phi, 2)
        return out


HOLD = None  # a rule outcome: keep the current status


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    explains: str
    applies: Callable[[Evidence], bool]
    status: PeerStatus | None  # None: held


def _failing(e: Evidence) -> bool:
    return e.last_ping_ok is False


RULES: tuple[Rule, ...] = (
    Rule(
        "ssh-ok",
        "the last SSH ping succeeded",
        lambda e: (
            bool(e.last_ping_ok)
            and (e.status is not PeerStatus.OFFLINE or e.ok_streak >= e.recover_after)
        ),
        PeerStatus.ONLINE,
    ),
    Rule(
        "recovering",
        "answering again after being offline, not yet for enough pings in a row",
        lambda e: bool(e.last_ping_ok),
        HOLD,
    ),
    Rule(
        "partitioned",
        "dropped together with many other peers: a partition, not a peer failure",
        lambda e: e.partitioned,
        PeerStatus.UNKNOWN,
    ),
    Rule(
        "self-doubt",
        "clawd itself is stalled or cut off: no verdict until it trusts itself again",
        lambda e: e.doubting and _failing(e),
        HOLD,
    ),
    Rule(
        "mdns-gone",
        "its mDNS record was withdrawn and SSH fails",
        lambda e: e.mdns_withdrawn and _failing(e),
        PeerStatus.OFFLINE,
    ),
    Rule(
        "tcp-answers",
        "SSH fails but the SSH port accepts connections",
        lambda e: _failing(e) and e.tcp_reachable,
        PeerStatus.UNRESPONSIVE,
    ),
    Rule(
        "mdns-present",
        "SSH fails but claw-clan still answers mDNS queries for its own instance",
        lambda e: _failing(e) and e.mdns and e.missed < e.mdns_grace_misses,
        PeerStatus.UNRESPONSIVE,
    ),
    Rule(
        "reachable-by-peers",
        "unreachable from this instance only: other peers reach it",
        lambda e: e.suspicion is Suspicion.OFFLINE and e.probes is Probes.REACHABLE,
        PeerStatus.UNRESPONSIVE,
    ),
    Rule(
        "probing",
        "the detector says offline; waiting for other peers' probes",
        lambda e: e.suspicion is Suspicion.OFFLINE and e.probes is Probes.PENDING,
        HOLD,
    ),
    Rule(
        "detector-offline",
        "the failure detector says offline and nothing else answers",
        lambda e: e.suspicion is Suspicion.OFFLINE and _failing(e),
        PeerStatus.OFFLINE,
    ),
    Rule(
        "suspect",
        "the failure detector suspects it",
        lambda e: e.suspicion is Suspicion.SUSPECT,
        HOLD,
    ),
    Rule("no-news", "nothing new", lambda e: True, HOLD),
)
RULES_BY_NAME = {rule.name: rule for rule in RULES}


def decide(e: Evidence) -> tuple[PeerStatus, Rule]:
    """The status the evidence calls for, and the rule that decided it."""
    for rule in RULES:
        if rule.applies(e):
            return (e.status if rule.status is HOLD else rule.status), rule
    raise AssertionError("the last rule always applies")
