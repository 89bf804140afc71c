"""The alerts outbox: messages on disk until every receiver has had them.

Two files in a 0700 directory, both 0600:

* `outbox.jsonl` -- a header line `{"outbox": 1, "base": B}`, then one Message JSON per
  line, appended and fsynced. Line i after the header is message number B + i: numbers
  count every message the outbox ever took, so they never change.
* `cursors.json` -- `{"outbox": 1, "cursors": {receiver id: N}}`: the receiver has had
  every message numbered below N. Written atomically (temp file, fsync, rename).

Compaction rewrites `outbox.jsonl` without the lines every registered receiver has had
(one atomic rename; the header's base moves up). Cursors hold message numbers, not line
offsets, so they need no shifting and either file, old or new, is right with them: a
crash at any moment restarts from a consistent pair.

A receiver starts at the end of the outbox the first time it is registered: one added
later gets what comes next, not the history. (Where there were no cursors on disk -- a
first start, or a lost file -- it starts at the oldest message kept instead: what was
appended before the receivers registered is not lost.) Only registered receivers hold
compaction back; the cursor of one no longer configured is dropped when the lines it
still wanted are compacted away.

Blocking: every method reads or writes files, so call them through `asyncio.to_thread`.
Methods are thread-safe (one lock), so receivers' tasks may call them concurrently.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from clawd.core.atomic import append_durable, remove_stale_temp_files, write_atomic
from clawd.core.errors import ClawdError
from clawd.serve.alerts.message import Message

log = structlog.get_logger("clawd.serve.alerts")

OUTBOX_FILE = "outbox.jsonl"
CURSORS_FILE = "cursors.json"
FORMAT = 1
COMPACT_LINES = 1000
COMPACT_BYTES = 1 << 20


class OutboxError(ClawdError):
    """The alerts outbox could not be read or written."""


@dataclass
class _Line:
    message: Message | None  # None: a line that is not a message (a torn write), skipped
    size: int  # bytes on disk, newline included


def _encode(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _header(base: int) -> bytes:
    return _encode({"outbox": FORMAT, "base": base})


def _body(data: bytes) -> tuple[int | None, list[bytes]]:
    """The header's base (None: no header) and the lines after it."""
    lines = _split(data)
    if not lines:
        return None, lines
    try:
        head = json.loads(lines[0])
    except ValueError:
        return None, lines
    if not isinstance(head, dict) or head.get("outbox") != FORMAT:
        return None, lines
    base = head.get("base")
    return (base if isinstance(base, int) and base >= 0 else 0), lines[1:]


def _split(data: bytes) -> list[bytes]:
    """Lines with their newline; a last line without one (a torn append) is a line too.

    Only b"\\n" ends a line: `append_durable` ends a torn line with one before appending.
    """
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


class Outbox:
    """Messages kept on disk with a delivery cursor per receiver (see the module doc)."""

    def __init__(
        self,
        directory: Path,
        *,
        compact_lines: int = COMPACT_LINES,
        compact_bytes: int = COMPACT_BYTES,
    ) -> None:
        self.directory = directory
        self.path = directory / OUTBOX_FILE
        self.cursors_path = directory / CURSORS_FILE
        self.compact_lines = compact_lines
        self.compact_bytes = compact_bytes
        self._lock = threading.Lock()
        # Registrations per receiver: two Deliveries may overlap across a reload.
        self._registered: Counter[str] = Counter()
        self._base = 0
        self._lines: list[_Line] = []
        self._keys: set[str] = set()
        self._cursors: dict[str, int] = {}
        self._cursors_known = True  # cursors.json was there and readable
        self._loaded = False
        with self._lock:
            self._load()

    @property
    def end(self) -> int:
        """The number the next message will get."""
        return self._base + len(self._lines)

    # -- loading

    def _load(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            remove_stale_temp_files(self.directory)
            data = self.path.read_bytes() if self.path.exists() else None
            cursors = self._read_cursors()
        except OSError as exc:
            raise OutboxError(f"cannot read the alerts outbox in {self.directory}: {exc}") from exc
        self._base, self._lines, self._keys = 0, [], set()
        if data is None:
            # A missing outbox (deleted by hand) must not number new messages below the
            # cursors: they would count as delivered already.
            self._base = max(cursors.values(), default=0)
        else:
            self._parse(data)
        self._cursors = {rid: min(max(n, self._base), self.end) for rid, n in cursors.items()}
        self._loaded = True

    def _parse(self, data: bytes) -> None:
        base, lines = _body(data)
        self._base = base if base is not None else 0
        number = 1 if base is None else 2  # line numbers in the file, for the warning
        for offset, raw in enumerate(lines):
            try:
                message: Message | None = Message.from_json(json.loads(raw))
            except (ValueError, RecursionError) as exc:
                message = None
                log.warning(
                    "alerts_outbox_line_skipped",
                    path=f"{self.path}:{number + offset}",
                    error=str(exc)[:200],
                )
            self._lines.append(_Line(message, len(raw)))
            if message is not None:
                self._keys.add(message.key)

    def _read_cursors(self) -> dict[str, int]:
        self._cursors_known = self.cursors_path.exists()
        if not self._cursors_known:
            return {}
        try:
            data = json.loads(self.cursors_path.read_bytes())
            cursors = data["cursors"]
            if not isinstance(cursors, dict):
                raise TypeError("cursors is not an object")
            return {str(rid): n for rid, n in cursors.items() if isinstance(n, int) and n >= 0}
        except (ValueError, KeyError, TypeError) as exc:
            # Written atomically, so only a person or a bad disk gets here. Every
            # receiver starts again from the oldest message kept: sent twice beats lost.
            self._cursors_known = False
            log.warning(
                "alerts_outbox_cursors_unreadable",
                path=str(self.cursors_path),
                error=str(exc)[:200],
            )
            return {}

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._load()

    # -- writing

    def _save_cursors(self) -> None:
        data = {"outbox": FORMAT, "cursors": self._cursors}
        try:
            write_atomic(self.cursors_path, (json.dumps(data, indent=1) + "\n").encode())
        except OSError as exc:
            raise OutboxError(f"cannot write {self.cursors_path}: {exc}") from exc

    def register(self, receiver_id: str) -> None:
        """Make `receiver_id` a receiver. A new one starts at the end (no history), unless
        no cursors were on disk (a first start, or lost): then at the oldest message kept."""
        with self._lock:
            self._ensure_loaded()
            self._registered[receiver_id] += 1
            if receiver_id not in self._cursors:
                self._cursors[receiver_id] = self.end if self._cursors_known else self._base
                self._save_cursors()
                self._cursors_known = True

    def unregister(self, receiver_id: str) -> None:
        """Undo one `register`; unregistered, it no longer holds compaction back (its
        cursor stays on disk)."""
        with self._lock:
            self._registered[receiver_id] -= 1
            if self._registered[receiver_id] <= 0:
                del self._registered[receiver_id]

    def append(self, message: Message) -> bool:
        """Durably add `message`; False (nothing written) if one with its key is here."""
        with self._lock:
            self._ensure_loaded()
            if message.key in self._keys:
                return False
            line = _encode(message.to_json())
            try:
                if not self.path.exists():
                    write_atomic(self.path, _header(self._base))
                append_durable(self.path, line)
            except OSError as exc:
                # Part of the line may be on disk: read the file again before the next use.
                self._loaded = False
                raise OutboxError(f"cannot write {self.path}: {exc}") from exc
            self._lines.append(_Line(message, len(line)))
            self._keys.add(message.key)
            return True

    # -- reading and delivering

    def _cursor(self, receiver_id: str) -> int:
        if receiver_id not in self._registered:
            raise ValueError(f"receiver {receiver_id} is not registered with the outbox")
        return self._cursors[receiver_id]

    def pending(self, receiver_id: str, limit: int | None = None) -> list[Message]:
        """The messages `receiver_id` has not had yet, oldest first (at most `limit`)."""
        with self._lock:
            self._ensure_loaded()
            found: list[Message] = []
            for line in self._lines[self._cursor(receiver_id) - self._base :]:
                if limit is not None and len(found) >= limit:
                    break
                if line.message is not None:
                    found.append(line.message)
            return found

    def pending_count(self, receiver_id: str) -> int:
        with self._lock:
            self._ensure_loaded()
            start = self._cursor(receiver_id) - self._base
            return sum(1 for line in self._lines[start:] if line.message is not None)

    def delivered(self, receiver_id: str, count: int) -> None:
        """`receiver_id` has had its first `count` pending messages.

        The cursor moves in memory first: if it cannot be saved (OutboxError), this run
        does not send them again; a restart before the next save would, once.
        """
        with self._lock:
            self._ensure_loaded()
            index = self._cursor(receiver_id) - self._base
            left = count
            # Skipped lines before, between and right after the messages go with them.
            while index < len(self._lines) and (left or self._lines[index].message is None):
                if self._lines[index].message is not None:
                    left -= 1
                index += 1
            if left:
                raise ValueError(f"receiver {receiver_id} has fewer than {count} pending")
            self._cursors[receiver_id] = self._base + index
            self._save_cursors()
            self._maybe_compact()

    # -- compaction

    def _maybe_compact(self) -> None:
        if not self._registered:
            return
        upto = min(self._cursors[rid] for rid in self._registered) - self._base
        if upto <= 0:
            return
        dropped_bytes = sum(line.size for line in self._lines[:upto])
        if upto > self.compact_lines or dropped_bytes > self.compact_bytes:
            self._compact(upto)

    def _compact(self, upto: int) -> None:
        base = self._base + upto
        try:
            # Read again rather than trusting sizes kept in memory: append_durable may
            # have ended a torn line with a newline of its own.
            old_base, lines = _body(self.path.read_bytes())
            if (old_base or 0) != self._base or len(lines) != len(self._lines):
                self._loaded = False  # the file is not what this outbox wrote: reload
                log.warning("alerts_outbox_changed_on_disk", path=str(self.path))
                return
            kept = lines[upto:]
            if kept and not kept[-1].endswith(b"\n"):
                kept[-1] += b"\n"  # a torn last line stays a line of its own
            write_atomic(self.path, _header(base) + b"".join(kept))
        except OSError as exc:
            # The old file is intact; compaction is tried again at the next delivery.
            log.warning("alerts_outbox_not_compacted", path=str(self.path), error=str(exc))
            return
        for line in self._lines[:upto]:
            if line.message is not None:
                self._keys.discard(line.message.key)
        self._lines = self._lines[upto:]
        self._base = base
        stale = [rid for rid, n in self._cursors.items() if n < base]
        if stale:
            for rid in stale:
                del self._cursors[rid]
            # If this fails they are clamped to the base again at the next load.
            with contextlib.suppress(OutboxError):
                self._save_cursors()
        log.info("alerts_outbox_compacted", dropped=upto, kept=len(self._lines), base=base)
