"""Registering our own mDNS record under a name no other machine announces.

Another machine announcing our instance name must not stop clawd from starting (under
systemd's Restart=on-failure that is a restart loop): we take `gw-main-2`, `-3` … instead.
We rename ourselves rather than pass zeroconf's `allow_name_change`: that one renames
without a bound, and says neither which name it found taken nor who holds it.

Only a conflict found while probing is resolved; zeroconf does not notice a machine that
starts announcing our name after we registered, so neither does clawd.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from zeroconf import DNSQuestionType, IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from clawd.core.errors import ClawdError
from clawd.core.text import clean_text

log = structlog.get_logger("clawd.sources.discovery")

# The wanted name, then -2 … -9: each name costs up to about 3.5 s (lookup and probe), and
# the daemon's start waits for discovery; more than a few taken names is a flood, not a coincidence.
MAX_INSTANCE_NUMBER = 9
# A holder's multicast answer to a QM question takes about 1 s (its aggregation delay, and
# up to 1 s more for a record it multicast in the last second), longer on a busy machine:
# our lookup listens this long before zeroconf's probe (about 1 s) starts. Racing the two
# lost on a loaded CI machine: the probe ended first and a taken name was announced.
LOOKUP_TIMEOUT_MS = 2500


def instance_part(info: AsyncServiceInfo) -> str:
    """`gw-main` of `gw-main._claw-clan._tcp.local.`."""
    return info.name[: -len(info.type) - 1] if info.name.endswith(info.type) else info.name


async def _holder(aiozc: AsyncZeroconf, info: AsyncServiceInfo) -> AsyncServiceInfo | None:
    """The records another responder gives for `info.name`, or None within the timeout.

    Asked as QM (multicast answers): a QU answer is unicast to port 5353, and where several
    zeroconf sockets share that port (clawd and avahi, or many daemons on one host) only
    one of them receives it; that is also how zeroconf's own probe misses a holder.
    """
    other = AsyncServiceInfo(info.type, info.name)
    if await other.async_request(aiozc.zeroconf, LOOKUP_TIMEOUT_MS, DNSQuestionType.QM):
        return other
    return None


def _address(other: AsyncServiceInfo | None) -> str:
    addresses = other.parsed_scoped_addresses(IPVersion.All) if other is not None else []
    return ",".join(clean_text(a) for a in addresses) or "unknown"


async def _try_register(
    aiozc: AsyncZeroconf, info: AsyncServiceInfo
) -> tuple[Awaitable[Any] | None, str]:
    """(the broadcast, "") once `info` is registered; (None, the holder's address) if taken.

    The lookup ends before the probe starts: once registered, our own records answer any
    lookup, so a holder's late answer could no longer be told from our echo.
    """
    other = await _holder(aiozc, info)
    if other is not None:
        return None, _address(other)
    try:
        return await aiozc.async_register_service(info), ""
    except NonUniqueNameException:  # a holder's answer reached our cache during the probe
        other = AsyncServiceInfo(info.type, info.name)
        return None, _address(other if other.load_from_cache(aiozc.zeroconf) else None)


async def register_unique(
    aiozc: AsyncZeroconf, build: Callable[[int], AsyncServiceInfo]
) -> tuple[AsyncServiceInfo, int, Awaitable[Any]]:
    """Register `build(1)`, else `build(2)` … : the record taken, its number, its broadcast.

    Logs one `mdns_name_conflict` warning when the wanted name was taken; ClawdError when
    every name up to MAX_INSTANCE_NUMBER is.
    """
    wanted: AsyncServiceInfo | None = None
    other = "unknown"
    for number in range(1, MAX_INSTANCE_NUMBER + 1):
        info = build(number)
        broadcast, holder = await _try_register(aiozc, info)
        if broadcast is None:
            if wanted is None:
                wanted, other = info, holder
            continue
        if wanted is not None:
            log.warning(
                "mdns_name_conflict",
                wanted=clean_text(instance_part(wanted)),
                announced=clean_text(instance_part(info)),
                other_address=other,
                hint="another machine announces this instance's name; "
                "give each instance a unique instance.gatewayId",
            )
        return info, number, broadcast
    assert wanted is not None
    raise ClawdError(
        f"other machines already announce {instance_part(wanted)!r} over mDNS (one at {other}) "
        f"and every renamed variant up to {instance_part(info)!r}; "
        "give each instance a unique instance.gatewayId"
    )
