"""The daemon's side of `clawd peer forget`: the keeper drops the peer and deletes its files."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from clawd.config.settings import Settings
from clawd.decide.from_settings import static_peers
from clawd.keep.keeper import FleetKeeper

# The keeper applies observations in order; a long queue (1,000 peers' pings) is seconds.
FORGET_WAIT_SECONDS = 10.0


def static_note(gateway_id: str) -> str:
    return (
        f"{gateway_id} is a static peer (config.json `peers`): remove it from config.json "
        "and run `clawd reload`"
    )


class ForgetAnswer:
    def __init__(self, keeper: FleetKeeper, settings: Callable[[], Settings]) -> None:
        self.keeper, self.settings = keeper, settings

    async def request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        gid = request.get("gatewayId")
        if not isinstance(gid, str) or not gid:
            return {"ok": False, "error": "peer-forget needs a gatewayId"}
        if any(i.gateway_id == gid for i in static_peers(self.settings())):
            return {"ok": False, "static": True, "error": static_note(gid)}
        if gid not in self.keeper.view.peers:
            return {"ok": False, "unknown": True, "error": f"the daemon knows no peer {gid!r}"}
        if not await self.keeper.forget(gid, FORGET_WAIT_SECONDS):
            return {"ok": False, "error": f"the daemon did not forget {gid} within 10 s"}
        return {"ok": True, "gatewayId": gid}
