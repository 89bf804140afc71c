"""`clawd peer forget`: the operator removed a peer; the view lets go of every trace of it.

Its record goes, and with it the ping target (the pinger follows the view); a start-up wait
stops waiting for it and an open partition stops counting it down. History (incidents,
ping rows) stays: `Decision.forgotten` tells the keeper to delete the files only.
"""

from __future__ import annotations

import dataclasses

from clawd.core.observations import PeerForgotten
from clawd.decide.view import Decision


def forget(d: Decision, obs: PeerForgotten) -> None:
    gid = obs.gateway_id
    view = d.view
    if gid not in view.peers or gid == view.me.gateway_id:
        return
    peers = {g: r for g, r in view.peers.items() if g != gid}
    settle = view.settle
    if settle is not None and gid in settle.unheard:
        settle = dataclasses.replace(settle, unheard=settle.unheard - {gid})
    part = view.partition
    if part is not None and gid in part.members:
        part = dataclasses.replace(part, members=part.members - {gid})
    d.view = dataclasses.replace(view, peers=peers, settle=settle, partition=part)
    d.own_peers = peers
    d.forgotten.append(gid)
    d.moved = True  # it may have been the leader: elect again
