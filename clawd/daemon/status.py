"""The daemon's answer to `clawd status` (and `--why`), and systemd's one-line STATUS=."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from clawd.act.backup.manager import BackupManager
from clawd.core.model import utcnow
from clawd.decide.explain import explain, find_peer
from clawd.decide.view import FleetView
from clawd.keep.keeper import FleetKeeper, summary
from clawd.keep.store.repository import FleetRepository
from clawd.serve.status import peer_rows
from clawd.sources.loopmon import LoopMonitor
from clawd.sources.membership import UnverifiedPeer
from clawd.sources.pinger import Pinger


class StatusAnswer:
    def __init__(
        self,
        keeper: FleetKeeper,
        backups: BackupManager,
        repo: FleetRepository,
        pinger: Pinger,
        loop_monitor: LoopMonitor,
        announced: Callable[[], dict[str, str] | None] | None = None,
    ) -> None:
        self.keeper, self.backups, self.repo = keeper, backups, repo
        self.pinger, self.loop_monitor = pinger, loop_monitor
        # Announcements held until proven over SSH (membership's), when discovery is on.
        self.unverified: Callable[[], list[UnverifiedPeer]] = list
        # Per notification receiver (redacted): pending, failing since, last error.
        self.alerts: Callable[[], list[dict[str, Any]]] = list
        self.announced = announced  # None: discovery is off

    def text(self, view: FleetView | None = None) -> str:
        text = f"{summary(view or self.keeper.view)}; {self.backups.status_line()}"
        pg = self.repo.sink_state()
        return text if pg in ("off", "connected") else f"{text}; postgres {pg}"

    async def request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        view = self.keeper.view
        t = self.keeper.reconciler.t
        if (wanted := request.get("why")) is not None:
            record = find_peer(view, str(wanted))
            if record is None:
                return {"ok": False, "error": f"no peer with gateway id or name {wanted!r}"}
            return {"ok": True, "why": explain(view, record, t, utcnow())}
        rows = peer_rows(
            {g: r.instance for g, r in view.peers.items()},
            {g: r.state for g, r in view.peers.items()},
        )
        for row in rows:
            record = view.peers[row["gatewayId"]]
            row["phi"] = round(min(record.phi, 999.0), 2)
            row["rule"] = record.rule
            row["verified"] = record.verified
            row["trust"] = record.trust.value
            # False: its status is the fleet's verdict (its observers are other machines).
            row["probed"] = view.probes(record.instance.gateway_id)
        return {
            "ok": True,
            "summary": summary(view),
            "leader": view.leader,
            "postgres": self.repo.sink_state(),
            "backup": self.backups.status_line(),
            "loopLagMs": self.loop_monitor.percentiles_ms(),
            "pinger": self.pinger.counters(),
            "observations": self.keeper.observations,
            "epoch": view.epoch,
            # Backend postgres: the lease row as last read, and whether we hold its lock.
            "lease": None
            if view.lease is None
            else {"leader": view.lease.leader, "epoch": view.lease.epoch, "held": view.lease.held},
            "alerts": self.alerts(),
            "doubting": view.doubting,
            "partition": sorted(view.partition.members) if view.partition else None,
            "detector": t.detector.kind,
            # The mDNS instance name announced, and the wanted one (differ after a conflict).
            "mdns": self.announced() if self.announced is not None else None,
            "peers": rows,
            "unverified": [
                {
                    "gatewayId": u.gateway_id,
                    "address": u.address,
                    "since": u.since.isoformat(),
                    "attempts": u.attempts,
                    "lastError": u.last_error,
                }
                for u in self.unverified()
            ],
        }
