"""What a leader loop does with a stronger token a peer's fence reports: adopt or refuse.

decide.fencing says whether the report may be believed; this logs each refusal once per
(peer, reason) however often the leader retries, and says how soon to try the peer again.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from clawd.act.fleetops.fence import FenceToken, stored_fields
from clawd.decide.fencing import Refusal, fence_refusal, retry_soon
from clawd.decide.view import FleetView

log = structlog.get_logger("clawd.fence")


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    # Try the peer again on the next leader round instead of backing off.
    soon: bool

    def detail(self, stored: FenceToken) -> str:
        return f"its fence report was refused ({self.reason}: {stored})"


class FenceGuard:
    """Screens the tokens peers report; one loop's memory of what it logged."""

    def __init__(self, work: str) -> None:
        self.work = work  # which leader loop: "distribution" or "recovery"
        self._logged: set[tuple[str, Refusal]] = set()

    def screen(
        self, view: FleetView | None, reported_by: str, stored: FenceToken
    ) -> Refused | None:
        """None: adopt `stored`. Otherwise why not (logged the first time per reason)."""
        if view is None:
            return None
        reason = fence_refusal(view, stored.epoch, stored.gateway_id, reported_by)
        if reason is None:
            return None
        if (reported_by, reason) not in self._logged:
            self._logged.add((reported_by, reason))
            log.warning(
                "fence_report_refused",
                work=self.work,
                gateway=reported_by,
                reason=reason,
                epoch=view.epoch,
                **stored_fields(stored),
            )
        return Refused(reason, retry_soon(view, reason, stored.gateway_id))

    def forget(self, gateway_id: str) -> None:
        """The peer's claim went through: a later refusal is news again."""
        self._logged = {key for key in self._logged if key[0] != gateway_id}
