"""Which epochs a peer's fence may teach us: refusing poisoned fence tokens.

A peer answers the fence script with the token it holds, and a leader adopts a stronger
one (it raises its epoch past it). A rogue peer can answer anything: adopting an absurd
epoch would be written to every legitimate peer's fence and shut every later leader out
for good. So a reported token is adopted only when its epoch is one the fleet could have
reached and the peer that reported it is verified. Pure: the leader loops log, the election ignores.
"""

from __future__ import annotations

from typing import Literal

from clawd.decide.view import FleetView

# Epochs grow by one per leader change (or per higher epoch seen on a peer, +1): a real
# fleet reaches thousands in years. A million steps past our own epoch is no fleet's
# history, only a lie; the bound still leaves room for a leader that missed every change
# while it was away (its epoch restarts at 0 and must catch up in one step).
MAX_EPOCH_STEP = 1_000_000

Refusal = Literal["implausible_epoch", "unverified_reporter"]


def fence_refusal(view: FleetView, epoch: int, writer: str, reported_by: str) -> Refusal | None:
    """Why a fence token (`epoch`, written by gateway `writer`) that peer `reported_by`
    says it holds must not be adopted; None when it may be.

    The writer itself is not screened: the other side of a split brain is by definition a
    leader we cannot see (and a leader that died may never have been verified in this
    run); what makes its token believable is that a peer which proved its identity holds
    it, and that its epoch is one a fleet can reach.
    """
    if epoch > view.epoch + MAX_EPOCH_STEP:
        return "implausible_epoch"
    reporter = view.peers.get(reported_by)
    if reporter is None or not reporter.verified:
        return "unverified_reporter"
    return None


def retry_soon(view: FleetView, refusal: Refusal, writer: str) -> bool:
    """A reporter we know but have not verified yet (right after a restart) is likely
    proven within a ping round: retry on the next leader round, not after a long backoff."""
    return refusal == "unverified_reporter"
