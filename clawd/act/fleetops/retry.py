"""Per-peer backoff for leader actions; how long a persisting failure waits to be logged again."""

from __future__ import annotations

from dataclasses import dataclass

# A problem that persists is logged again after this long: the journal keeps a reminder
# without a line per retry.
REPEAT_SECONDS = 600.0


@dataclass(slots=True)
class _Entry:
    next_due: float = 0.0
    delay: float = 0.0
    error: str | None = None


class PeerBackoff:
    """When each peer may be tried again; doubling delays after failures."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._peers: dict[str, _Entry] = {}

    def due(self, gateway_id: str, now: float) -> bool:
        entry = self._peers.get(gateway_id)
        return entry is None or now >= entry.next_due

    def next_due(self) -> float | None:
        """The earliest time any peer in backoff becomes due."""
        return min((e.next_due for e in self._peers.values()), default=None)

    def failed(self, gateway_id: str, error: str, now: float) -> bool:
        """Back off; True when this error differs from the peer's last one (log it)."""
        entry = self._peers.setdefault(gateway_id, _Entry())
        entry.delay = min(self.maximum, max(self.initial, entry.delay * 2))
        entry.next_due = now + entry.delay
        new = entry.error != error
        entry.error = error
        return new

    def hold(self, gateway_id: str, until: float) -> None:
        """Do not try this peer before `until` (after a success)."""
        self._peers[gateway_id] = _Entry(next_due=until)

    def forget(self, gateway_id: str) -> None:
        self._peers.pop(gateway_id, None)

    def last_error(self, gateway_id: str) -> str | None:
        entry = self._peers.get(gateway_id)
        return entry.error if entry else None
