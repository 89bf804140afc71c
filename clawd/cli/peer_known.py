"""What the files say about the peers, for `clawd peer …`: static ones from config.json,
found ones from the store (peers/*.json, fleet.json), pins from trusted-peers.json."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from clawd.config.settings import Settings
from clawd.core.model import Instance
from clawd.decide.from_settings import static_peers
from clawd.keep.store.json_store import JsonStore
from clawd.sources.pins import PINS_FILE_NAME, Pin, read_pins


@dataclass(frozen=True, slots=True)
class KnownPeers:
    static: dict[str, Instance]  # config.json `peers`
    stored: dict[str, Instance]  # the store's files (mDNS finds, and static ones seen)
    pins: dict[str, Pin]

    def instance(self, gateway_id: str) -> Instance | None:
        return self.static.get(gateway_id) or self.stored.get(gateway_id)

    def source(self, gateway_id: str) -> str:
        return "static" if gateway_id in self.static else "mdns"

    def ids(self) -> list[str]:
        return sorted({*self.static, *self.stored})


def known_peers(settings: Settings) -> KnownPeers:
    """Read the files (the store read-only: a running daemon may be writing them)."""
    snap = asyncio.run(JsonStore(settings.home).load(read_only=True)).snapshot
    me = settings.instance.gateway_id
    stored = {g: i for g, i in snap.instances.items() if g != me}
    static = {i.gateway_id: i for i in static_peers(settings)}
    return KnownPeers(static, stored, read_pins(settings.home / PINS_FILE_NAME))
