"""How far clawd trusts a peer: what its SSH host key proved, and what that allows.

mDNS proves nothing (anyone on the LAN may announce anything); an SSH handshake proves
that the far end holds a host key. How that key came to be trusted decides what the peer
may do: any verified peer counts for the election, only a key the operator vouched for
(in known_hosts, or with `clawd peer trust`) receives secrets.
"""

from __future__ import annotations

import enum


class Trust(enum.StrEnum):
    NONE = "none"  # never verified over SSH (only announced, or not reached yet)
    FIRST_USE = "first-use"  # key recorded on first contact (hostKeyPolicy accept-new)
    KNOWN_HOSTS = "known-hosts"  # key found in the operator's known_hosts file
    OPERATOR = "operator"  # key accepted with `clawd peer trust`


def secrets_allowed(trust: Trust) -> bool:
    """May this peer receive the `postgres` section (and any other secret)?"""
    return trust in (Trust.KNOWN_HOSTS, Trust.OPERATOR)
