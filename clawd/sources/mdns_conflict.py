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
from zeroconf import IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from clawd.core.errors import ClawdError
from clawd.core.text import clean_text

log = structlog.get_logger("clawd.sources.discovery")

# The wanted name, then -2 … -9: each try probes for about 1 s, and the daemon's start
# waits for discovery; more than a few taken names is a flood, not a coincidence.
MAX_INSTANCE_NUMBER = 9
LOOKUP_TIMEOUT_MS = 1000  # the holder's records are usually in the cache already


def instance_part(info: AsyncServiceInfo) -> str:
    """`gw-main` of `gw-main._claw-clan._tcp.local.`."""
    return info.name[: -len(info.type) - 1] if info.name.endswith(info.type) else info.name


async def holder_address(aiozc: AsyncZeroconf, info: AsyncServiceInfo) -> str:
    """The address the other announcer of `info.name` gives, or "unknown"."""
    other = AsyncServiceInfo(info.type, info.name)
    if not await other.async_request(aiozc.zeroconf, LOOKUP_TIMEOUT_MS):
        return "unknown"
    addresses = other.parsed_scoped_addresses(IPVersion.All)
    return ",".join(clean_text(a) for a in addresses) or "unknown"


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
        try:
            broadcast = await aiozc.async_register_service(info)
        except NonUniqueNameException:
            if wanted is None:
                wanted = info
                other = await holder_address(aiozc, info)
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
