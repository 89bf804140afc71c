"""Leadership in a decision: the lowest lead number among the online instances leads,
and every change raises the epoch (a Lamport clock) that fences a stale leader's actions
off on the peers. Pure, like the reconciler that calls it."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from clawd.core.model import EventType, Incident
from clawd.core.observations import EpochSeen
from clawd.decide.fencing import MAX_EPOCH_STEP
from clawd.decide.lease import lease_epoch_seen
from clawd.decide.view import Decision, elect_leader, settled


def elect(d: Decision, now: datetime) -> None:
    if d.view.settle is not None:
        if not settled(d.view, now):
            return
        d.view = dataclasses.replace(d.view, settle=None)
    if d.view.lease is not None:
        return  # PostgreSQL decides: the lease's leader and epoch (decide/lease.py)
    leader = elect_leader(d.view)
    if leader == d.view.leader:
        return
    epoch = d.view.epoch + 1
    d.incidents.append(
        Incident(
            gateway_id=leader or d.view.me.gateway_id,
            event_type=EventType.LEADER_CHANGE,
            details={"old": d.view.leader, "new": leader, "epoch": epoch},
            timestamp=now,
        )
    )
    d.view = dataclasses.replace(d.view, leader=leader, epoch=epoch)


def epoch_seen(d: Decision, obs: EpochSeen, now: datetime) -> None:
    view = d.view
    if view.lease is not None:
        lease_epoch_seen(d, obs)
        return
    if obs.epoch < view.epoch:
        return
    # The leader loops refuse (and log) poisoned reports before they get here (see
    # decide/fencing.py); this keeps an absurd epoch out of the election whoever reports it.
    if obs.epoch > view.epoch + MAX_EPOCH_STEP:
        return
    me = view.me
    if view.leader == me.gateway_id:
        # We lead: whoever holds that epoch (an earlier us, a leader that has died
        # since, the other side of a split brain) is not up in our view, or it would
        # lead. A new epoch, so our actions are no longer refused as stale; the peers'
        # fences still allow one reinstall per epoch.
        epoch = obs.epoch + 1
        d.incidents.append(
            Incident(
                gateway_id=me.gateway_id,
                event_type=EventType.LEADER_CHANGE,
                details={
                    "old": view.leader,
                    "new": view.leader,
                    "epoch": epoch,
                    "reason": f"epoch {obs.epoch} seen on a peer",
                },
                timestamp=now,
            )
        )
        d.view = dataclasses.replace(view, epoch=epoch)
    elif obs.epoch > view.epoch:
        d.view = dataclasses.replace(view, epoch=obs.epoch)
