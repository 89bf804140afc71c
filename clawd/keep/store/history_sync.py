"""Which JSON history lines (incidents, skill audits) PostgreSQL has not been sent yet.

A marker file records how far into each `.jsonl` file the lines were handed
to PostgreSQL (durably: into the spool). Lines sent twice are harmless: each
carries its idempotency key.
"""

from __future__ import annotations

import json

import structlog

from clawd.core.atomic import write_atomic
from clawd.keep.store.json_store import JsonStore
from clawd.keep.store.ops import WriteOp

log = structlog.get_logger("clawd.keep.store.history")

MARKER_FILE = "jsonl-synced.json"


class HistorySync:
    def __init__(self, store: JsonStore) -> None:
        self.store = store
        self.marker_path = store.home / "spool" / MARKER_FILE
        self._new_marker: dict[str, int] | None = None

    def _marker(self) -> dict[str, int]:
        try:
            raw = json.loads(self.marker_path.read_text())
            return {k: int(v) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, TypeError):
            log.warning("history_marker_unreadable", path=str(self.marker_path))
            return {}

    def pending_ops(self) -> list[WriteOp]:
        """Blocking: read the history lines after the marker."""
        marker = self._marker()
        ops: list[WriteOp] = []
        new_marker = dict(marker)
        for offset, incident in self.store.read_incidents(start=marker.get("incidents", 0)):
            ops.append(incident)
            new_marker["incidents"] = offset
        for offset, audit in self.store.read_skill_audits(start=marker.get("skillAudit", 0)):
            ops.append(audit)
            new_marker["skillAudit"] = offset
        self._new_marker = new_marker
        return ops

    def commit(self) -> None:
        """Blocking: the ops from pending_ops() are durable in the spool."""
        if self._new_marker is None:
            return
        self.marker_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.marker_path, json.dumps(self._new_marker).encode())
        self._new_marker = None
