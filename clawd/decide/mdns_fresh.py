"""Fresh mDNS evidence: while a peer's SSH fails, ask whether its announcer answers now.

A record in the mDNS cache says only that the peer announced itself once: a machine that
lost power sends no goodbye, and its record stays in every cache for up to 75 minutes.
So after each failed ping the reconciler asks (an `MdnsQuery`, at most one per peer and
ping round) and takes only the answer (`MdnsFresh`) as "still announcing"
(clawd/decide/view.py `mdns_fresh`): no answer, or none within the last round, is not
announcing, whatever the cache holds.
"""

from __future__ import annotations

import dataclasses

from clawd.core.observations import MdnsFresh, MdnsQuery
from clawd.decide.view import Decision, PeerRecord


def ask(d: Decision, record: PeerRecord) -> None:
    """After a failed ping: ask a peer that announced itself whether it still answers."""
    if record.state.mdns_broadcasting and not record.mdns_withdrawn:
        d.mdns_queries.append(MdnsQuery(record.instance.gateway_id, record.instance.ip))


def take_answer(d: Decision, obs: MdnsFresh) -> bool:
    """Keep when it last answered; True when its status must be decided again."""
    record = d.view.peers.get(obs.gateway_id)
    if record is None:
        return False  # a peer no longer tracked
    answered = obs.at if obs.answered else None
    if answered is None and record.mdns_answered_at is None:
        return False  # no answer, again: nothing changed
    d.put(dataclasses.replace(record, mdns_answered_at=answered))
    return True
