"""The config.json one peer receives: our fleet-wide settings, shaped by how far it is trusted.

Secrets (the `postgres` section) go only to a peer whose host key the operator vouched for
(known_hosts, or `clawd peer trust`); a peer trusted on first use, or not verified at all,
gets the rest. A loopback `postgres.host` (localhost, 127.0.0.0/8, ::1, a socket path) is
never sent: on another machine it would name that machine's own loopback. Whatever is
withheld, the peer keeps its own value of it, so a peer set up by hand is not broken.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from clawd.config.settings import Settings
from clawd.core.trust import Trust, secrets_allowed
from clawd.sources.pins import Pin

log = structlog.get_logger("clawd.distribution")

# Keys that describe one machine, not the fleet: a peer keeps its own.
PER_MACHINE_KEYS = ("instance", "peers", "home")
# Sections that hold a secret: sent only where secrets_allowed(trust).
SECRET_KEYS = ("postgres", "notify")  # notify: Apprise URLs carry tokens and passwords
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_TRUST_TEXT = {
    Trust.NONE: "host key not verified",
    Trust.FIRST_USE: "host key trusted on first use",
}
# Loopback hosts already warned about: the document is the same on every retry and peer.
_warned_hosts: set[str] = set()


@dataclass(frozen=True, slots=True)
class Withheld:
    """A key of ours left out of one peer's config.json, and why (no value: may be secret)."""

    key: str  # "postgres" or "postgres.host"
    reason: str  # for a person: "host key trusted on first use"

    def text(self, gateway_id: str) -> str:
        if self.key in SECRET_KEYS:
            return f"without {self.key}: {self.reason}; run `clawd peer trust {gateway_id}`"
        return f"without {self.key}: {self.reason}"


@dataclass(frozen=True, slots=True)
class PeerConfig:
    data: bytes  # config.json as the peer should hold it
    withheld: tuple[Withheld, ...] = ()

    def note(self, gateway_id: str) -> str:
        """'' when nothing was withheld; else one clause per key, for the push report."""
        return "; ".join(w.text(gateway_id) for w in self.withheld)


def is_loopback_host(host: str) -> bool:
    """Does `host` (as libpq/asyncpg read it) name the machine it is read on?"""
    name = host.strip().lower().rstrip(".")
    if not name or name.startswith("/") or name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True  # empty: libpq's default, the local socket; "/…": a socket folder
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def config_for_peer(ours: dict[str, Any], theirs: bytes | None, trust: Trust) -> PeerConfig:
    """Our fleet-wide settings for one peer: its own identity, static peers and home kept;
    secrets only if `trust` allows them; never a loopback postgres.host."""
    remote = _parse(theirs)
    withheld: list[Withheld] = []
    merged: dict[str, Any] = {}
    for key, value in ours.items():
        if key in PER_MACHINE_KEYS:
            continue
        if key in SECRET_KEYS and not secrets_allowed(trust):
            withheld.append(Withheld(key, _TRUST_TEXT.get(trust, str(trust))))
            if key in remote:
                merged[key] = remote[key]
            continue
        if key == "postgres" and isinstance(value, dict):
            value = _without_loopback_host(value, remote.get(key), withheld)
        merged[key] = value
    merged.update({k: remote[k] for k in PER_MACHINE_KEYS if k in remote})
    return PeerConfig((json.dumps(merged, indent=2) + "\n").encode(), tuple(withheld))


def _parse(theirs: bytes | None) -> dict[str, Any]:
    if theirs is None:
        return {}
    try:
        remote = json.loads(theirs)
    except ValueError:
        return {}
    return remote if isinstance(remote, dict) else {}


def _without_loopback_host(
    section: dict[str, Any], their_section: object, withheld: list[Withheld]
) -> dict[str, Any]:
    host = section.get("host")
    if not isinstance(host, str) or not is_loopback_host(host):
        return section
    withheld.append(Withheld("postgres.host", f"{host!r} is this machine's loopback"))
    if host not in _warned_hosts:
        _warned_hosts.add(host)
        log.warning(
            "config_loopback_host_withheld",
            host=host,
            fix="set postgres.host to an address the peers can reach",
        )
    # Same key order as ours; the peer's own host (if any) in its place.
    theirs = their_section.get("host") if isinstance(their_section, dict) else None
    out: dict[str, Any] = {}
    for key, value in section.items():
        if key != "host":
            out[key] = value
        elif isinstance(theirs, str):
            out[key] = theirs
    return out


def connection_trust(settings: Settings, pins: Mapping[str, Pin], gateway_id: str) -> Trust:
    """How a connection this clawd opens to `gateway_id` trusts its host key, as far as
    known without a daemon: the pin's trust if one was recorded, else what the policy
    allows (known_hosts: only keys there; accept-new: possibly a key seen first now)."""
    pin = pins.get(gateway_id)
    if pin is not None:
        return pin.trust
    if settings.ssh.host_key_policy == "known_hosts":
        return Trust.KNOWN_HOSTS
    return Trust.FIRST_USE
