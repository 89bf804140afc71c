"""What the sources report. Each observation is a fact about one peer at one time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from clawd.core.model import Instance
from clawd.core.trust import Trust


@dataclass(frozen=True, slots=True)
class PeerProof:
    """What an SSH connection proved about the far end: how its host key is trusted, and
    who it says it is in its own state.json (None: the file could not be read or parsed)."""

    trust: Trust
    fingerprint: str
    gateway_id: str | None
    lead_number: int | None

    def proves(self, gateway_id: str) -> bool:
        return self.trust is not Trust.NONE and self.gateway_id == gateway_id


@dataclass(frozen=True, slots=True)
class PingResult:
    """One SSH ping attempt and what it found out."""

    gateway_id: str
    at: datetime
    success: bool
    response_ms: int | None = None
    # Did the TCP port answer, even if SSH failed? None when not checked.
    tcp_reachable: bool | None = None
    # Is claw-clan installed there? None when this round did not check.
    installed: bool | None = None
    error: str | None = None
    # Who answered, when this round read the peer's identity (None: not read this round).
    proof: PeerProof | None = None


@dataclass(frozen=True, slots=True)
class MdnsSeen:
    """The peer announced itself (or refreshed its announcement) over mDNS."""

    instance: Instance
    at: datetime
    # Set by membership once the announced address proved the gateway id over SSH; an
    # announcement without it is a hint: it never creates a peer nor moves one.
    proof: PeerProof | None = None


@dataclass(frozen=True, slots=True)
class MdnsGone:
    """The peer's mDNS record was withdrawn (goodbye) or expired."""

    gateway_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class MdnsFresh:
    """Whether the peer answered an mDNS query for its own instance just now.

    Asked while its SSH fails (`MdnsQuery`): a record in the cache says only that the peer
    announced itself once (it stays there for up to 75 minutes after a power-off); an
    answer says its announcer is running now.
    """

    gateway_id: str
    at: datetime
    answered: bool


@dataclass(frozen=True, slots=True)
class PeerConfigured:
    """A static peer from config.json (networks without multicast)."""

    instance: Instance
    at: datetime


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Other peers probed this one for us (SWIM's ping-req)."""

    gateway_id: str
    at: datetime
    asked: tuple[str, ...]
    reachable_by: tuple[str, ...]
    unreachable_by: tuple[str, ...]

    @property
    def reached_by_majority(self) -> bool:
        """Did more than half of the helpers asked reach it? (see `majority`)"""
        return majority(len(self.reachable_by), len(self.asked))


def majority(votes: int, asked: int) -> bool:
    """Strictly more than half of those asked: one lying helper among two or three cannot
    overturn an `offline` verdict; a helper that could not probe counts as a "no"."""
    return 2 * votes > asked


@dataclass(frozen=True, slots=True)
class SelfHealth:
    """clawd starts or stops doubting itself (its loop stalled; nearly every peer failed)."""

    at: datetime
    doubting: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class EpochSeen:
    """A peer's fence holds this leadership epoch (from a leader with this lead number)."""

    at: datetime
    epoch: int
    gateway_id: str
    lead_number: int
    # The peer whose fence answered with it (the writer is `gateway_id`): a report is
    # adopted only from a verified peer (decide.fencing).
    reported_by: str = ""


@dataclass(frozen=True, slots=True)
class LeaseSeen:
    """The leader lease in PostgreSQL (backend postgres): its leader and epoch decide the
    view's, whoever this instance would elect itself (keep/lease.py reads and takes it)."""

    at: datetime
    leader: str | None  # the lease row's gateway id; None: no row yet
    epoch: int
    held: bool  # this instance holds the leader lock (only then may it act as leader)
    new: bool = False  # this instance just took `epoch`: the one leader_change to record
    active: bool = True  # False: the backend is json again; the view's own election runs


@dataclass(frozen=True, slots=True)
class Verdict:
    """The fleet's verdict on one machine, as the shared record holds it (fleet_verdict)."""

    up: bool
    since: datetime


@dataclass(frozen=True, slots=True)
class VerdictsSeen:
    """The shared record's verdicts (backend postgres), read when an incident is notified:
    the status of the peers this machine does not probe itself. `sessions`: the lease
    sessions open on the database (application names), i.e. the machines that run clawd
    there and so can observe others."""

    at: datetime
    verdicts: Mapping[str, Verdict]
    sessions: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SelfChanged:
    """This instance's own identity changed (a live edit of `instance.*`)."""

    instance: Instance
    at: datetime


@dataclass(frozen=True, slots=True)
class Started:
    """The fleet keeper starts: the start-up election waits for the peers' first answers."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; lets time-based rules (probes that never answered) settle."""

    at: datetime


@dataclass(frozen=True, slots=True)
class PeerForgotten:
    """The operator removed this peer (`clawd peer forget`): no file, no pings, no pin."""

    gateway_id: str
    at: datetime


Observation = (
    PingResult
    | MdnsSeen
    | MdnsGone
    | MdnsFresh
    | PeerConfigured
    | ProbeResult
    | SelfHealth
    | EpochSeen
    | LeaseSeen
    | VerdictsSeen
    | SelfChanged
    | Started
    | Tick
    | PeerForgotten
)


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """Ask these helpers to probe the target: the one request the reconciler sends back to a
    source (the indirect prober runs it; its verdict comes back as a `ProbeResult`)."""

    target: str
    host: str
    port: int
    helpers: tuple[str, ...]


MDNS_QUERY_WAIT_SECONDS = 1.0  # the longest an `MdnsQuery` waits: a live announcer answers in ms


@dataclass(frozen=True, slots=True)
class MdnsQuery:
    """Ask whether this peer still answers for its own mDNS instance (its SSH fails); the
    answer comes back as an `MdnsFresh` within `MDNS_QUERY_WAIT_SECONDS` (at most half the
    ping interval). `ip`: the address the answer must name."""

    gateway_id: str
    ip: str | None
