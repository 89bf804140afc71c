"""Membership wired to the daemon: the keeper's view says who is known, the leader work's
connector verifies announced addresses (its own short connections, pins enforced)."""

from __future__ import annotations

from clawd.core.model import Instance
from clawd.core.observations import PeerProof
from clawd.daemon.live import Live
from clawd.keep.keeper import FleetKeeper
from clawd.sources.identity import verify_at
from clawd.sources.membership import KnownPeer, Membership
from clawd.sources.ssh_client import Connector


def build_membership(
    own_gateway_id: str, live: Live, keeper: FleetKeeper, connector: Connector
) -> Membership:
    def known(gateway_id: str) -> KnownPeer | None:
        record = keeper.view.peers.get(gateway_id)
        if record is None:
            return None
        static = any((p.gateway_id or p.name) == gateway_id for p in live.settings.peers)
        inst = record.instance
        return KnownPeer(record.verified, static, inst.ip, inst.ssh_port, inst.ssh_user)

    async def verify(inst: Instance) -> PeerProof | None:
        s = live.settings
        return await verify_at(connector, inst, s.instance.ssh_user, s.ssh)

    s = live.settings
    return Membership(
        own_gateway_id,
        s.discovery,
        s.ping.interval_seconds,
        emit=keeper.emit,
        verify=verify,
        known=known,
    )
