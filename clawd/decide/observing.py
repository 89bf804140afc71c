"""The peers this machine does not probe: their status is the fleet's verdict.

With k observers per machine (decide/assignment.py) a machine probes a share of the fleet;
for every other peer it takes the shared record's verdict as that peer's status -- no
incident of its own (the fleet recorded the one incident), and peer files that stay
seed-compatible. Pure, like the reconciler that calls it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from clawd.core.lock_ids import lease_session_name
from clawd.core.model import PeerStatus
from clawd.core.observations import Verdict, VerdictsSeen
from clawd.decide.accrual import ArrivalHistory
from clawd.decide.assignment import assign
from clawd.decide.rules import Probes
from clawd.decide.suspicion import Suspicion
from clawd.decide.view import Decision, Outage, PeerRecord


def verdicts_seen(d: Decision, obs: VerdictsSeen, now: datetime) -> None:
    """New verdicts from the shared record: the peers this machine follows take them."""
    if (obs.verdicts, obs.sessions) == (d.view.verdicts, d.view.sessions):
        return
    d.view = dataclasses.replace(d.view, verdicts=obs.verdicts, sessions=obs.sessions)
    d.moved = True  # members may have changed: the assignment is computed again
    for gid in d.view.peers:
        if not d.view.probes(gid):
            follow(d, gid, now)


def reassign(d: Decision, k: int, now: datetime) -> None:
    """Compute what this machine probes again (members, peers or the leader changed): a
    peer it takes over starts from fresh evidence, one it hands over follows the fleet's
    verdict."""
    view = d.view
    if view.sessions is None:
        return  # who can observe is not known yet: this machine probes every peer
    assignment = assign(view, k)
    probed = assignment.mine
    if view.leader == view.me.gateway_id:
        probed |= {g for g in view.peers if lease_session_name(g) not in view.sessions}
    if assignment is view.assignment and probed == view.probed:
        return
    before = view.probed if view.assignment is not None else frozenset(view.peers)
    d.view = dataclasses.replace(view, assignment=assignment, probed=probed)
    for gid in probed - before:
        if gid in d.view.peers:
            d.put(_fresh(d.view.peers[gid], now))
    handed_over = [g for g in d.view.peers if not d.view.probes(g)]
    for gid in handed_over:
        follow(d, gid, now)
    settle = d.view.settle
    if settle is not None and settle.unheard & set(handed_over):
        # The start-up election waits for the peers this machine pings, no others.
        unheard = settle.unheard - set(handed_over)
        d.view = dataclasses.replace(d.view, settle=dataclasses.replace(settle, unheard=unheard))
    d.moved = True


def follow(d: Decision, gid: str, now: datetime) -> None:
    """Take the fleet's verdict as this peer's status (none yet: the status stays)."""
    record = d.view.peers[gid]
    verdict = d.view.verdicts.get(gid)
    if verdict is None:
        return
    status = PeerStatus.ONLINE if verdict.up else PeerStatus.OFFLINE
    if record.state.status is status and record.reported is status:
        return
    state = dataclasses.replace(record.state, status=status, updated_at=now)
    d.put(
        dataclasses.replace(
            record,
            state=state,
            # As if this machine had reported it: should it probe the peer later, its first
            # report is the next real change (a `recovery` after a down verdict).
            reported=status,
            since=verdict.since,
            outage=_outage(record, verdict),
            rule="fleet-verdict",
        )
    )
    d.save_state(state)
    d.moved = True


def _outage(record: PeerRecord, verdict: Verdict) -> Outage | None:
    return None if verdict.up else Outage(record.state.last_seen, verdict.since)


def _fresh(record: PeerRecord, now: datetime) -> PeerRecord:
    """A peer this machine starts to probe: no stale misses or rhythm from an earlier
    turn (they would judge it on gaps in which nobody here pinged it)."""
    state = dataclasses.replace(record.state, missed_pings=0, updated_at=now)
    return dataclasses.replace(
        record,
        state=state,
        arrivals=ArrivalHistory(),
        results=(),
        ok_streak=0,
        failing_since=None,
        probes=Probes.NONE,
        probes_at=None,
        suspicion=Suspicion.NONE,
        phi=0.0,
    )
