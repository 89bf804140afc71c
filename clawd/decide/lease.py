"""Leadership when PostgreSQL decides it (backend postgres): the view adopts the lease.

The lease's holder took its epoch from one sequence, so every instance reports the same
leader and epoch, and only the holder records the `leader_change` (one row per epoch for
the whole fleet); the others note what they adopted in the journal. Pure, like the
reconciler that calls it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from clawd.core.model import EventType, Incident
from clawd.core.observations import EpochSeen, LeaseSeen
from clawd.decide.fencing import MAX_EPOCH_STEP
from clawd.decide.view import Decision, Lease, Note


def lease_seen(d: Decision, obs: LeaseSeen, now: datetime) -> None:
    view = d.view
    if not obs.active:
        if view.lease is not None:  # back to the JSON backend: our own election decides
            d.view = dataclasses.replace(view, lease=None)
            d.moved = True
        return
    floor = view.lease.floor if view.lease is not None else 0
    lease = Lease(obs.leader, obs.epoch, obs.held, floor)
    if lease == view.lease:
        return
    d.moved = True  # leader work re-reads whether it may act
    changed = obs.leader is not None and (obs.leader, obs.epoch) != (view.leader, view.epoch)
    if not changed:
        d.view = dataclasses.replace(view, lease=lease)
        return
    details = {"old": view.leader, "new": obs.leader, "epoch": obs.epoch}
    if obs.new and obs.leader == view.leader:
        # The same leader in a new epoch (the fleet moving from the JSON backend's fenced
        # epochs to the lease, a fence past the lease's epoch): no change of leader.
        d.notes.append(Note("leader_epoch_raised", obs.leader or view.me.gateway_id, details))
    elif obs.new:
        d.incidents.append(
            Incident(
                gateway_id=view.me.gateway_id,
                event_type=EventType.LEADER_CHANGE,
                details=details,
                timestamp=now,
            )
        )
    else:
        d.notes.append(Note("leader_adopted", obs.leader or view.me.gateway_id, details))
    d.view = dataclasses.replace(view, lease=lease, leader=obs.leader, epoch=obs.epoch)


def lease_epoch_seen(d: Decision, obs: EpochSeen) -> None:
    """A peer's fence holds an epoch at least the lease's: the holder must take a newer one
    (from the sequence, past it); nobody raises an epoch on its own."""
    lease = d.view.lease
    assert lease is not None
    if obs.epoch <= lease.floor or obs.epoch > d.view.epoch + MAX_EPOCH_STEP:
        return
    d.view = dataclasses.replace(d.view, lease=dataclasses.replace(lease, floor=obs.epoch))
    d.moved = True
