"""A write-ahead spool for PostgreSQL writes.

Every batch bound for PostgreSQL is appended here (fsynced) before it is sent;
the read position advances only after PostgreSQL committed it. So a batch
survives a database outage and a daemon crash alike, and is sent again until
it lands; the idempotency keys make the second delivery a no-op.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiofiles
import structlog

from clawd.core.atomic import append_durable, write_atomic
from clawd.core.errors import StoreError
from clawd.keep.store.ops import WriteOp, decode_op, encode_lines, op_rows

log = structlog.get_logger("clawd.keep.store.spool")

SPOOL_FILE = "pg-spool.jsonl"
OFFSET_FILE = "pg-spool.offset"
REJECTED_FILE = "pg-rejected.jsonl"


def _encode_and_append(path: Path, ops: list[WriteOp]) -> int:
    data = encode_lines(ops)
    append_durable(path, data)
    return len(data)


class Spool:
    """Append-only file of pending writes plus the offset of the first unsent one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SPOOL_FILE
        self.offset_path = directory / OFFSET_FILE
        self.rejected_path = directory / REJECTED_FILE
        self.offset = 0
        self.size = 0
        # Offsets of unreadable lines already set aside in this run (report each once).
        self._set_aside_at: set[int] = set()
        self._aside_error: str | None = None
        self._commit_error: str | None = None

    @property
    def pending_bytes(self) -> int:
        return self.size - self.offset

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)
        if self.pending_bytes:
            log.info("spool_found", path=str(self.path), pending_bytes=self.pending_bytes)

    def _open_sync(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.size = self.path.stat().st_size if self.path.exists() else 0
            offset = 0
            if self.offset_path.exists():
                try:
                    offset = int(self.offset_path.read_text().strip() or 0)
                except ValueError:
                    # Unreadable offset: replay from the start; keys dedupe.
                    log.warning("spool_offset_unreadable", path=str(self.offset_path))
            self.offset = offset if 0 <= offset <= self.size else 0
        except OSError as exc:
            raise StoreError(f"cannot open the spool in {self.directory}: {exc}") from exc

    async def append(self, ops: list[WriteOp]) -> tuple[int, int]:
        """Durably append `ops`; returns the (start, end) byte range they occupy."""
        start = self.size
        try:
            written = await asyncio.to_thread(_encode_and_append, self.path, ops)
        except OSError as exc:
            raise StoreError(f"cannot write the spool {self.path}: {exc}") from exc
        self.size += written
        return start, self.size

    async def read(self, max_rows: int) -> tuple[list[WriteOp], int]:
        """Ops from the current offset (at least one, about `max_rows` rows) and the end offset.

        A torn final line (a crash mid-append) is left for later; it is never half-applied.
        A complete line that is not a record is set aside in the rejected file and skipped.
        """
        ops: list[WriteOp] = []
        rows = 0
        end = self.offset
        async with aiofiles.open(self.path, "rb") as fh:
            await fh.seek(self.offset)
            while rows < max_rows and end < self.size:
                line = await fh.readline()
                if not line.endswith(b"\n"):
                    break
                try:
                    op = decode_op(json.loads(line))
                except (ValueError, RecursionError) as exc:
                    if not await self._set_aside(line, end, exc):
                        break  # could not keep it: leave it in the spool for later
                    end += len(line)
                    continue
                end += len(line)
                ops.append(op)
                rows += op_rows(op)
        return ops, end

    async def commit(self, end: int) -> None:
        """Everything before byte `end` is in PostgreSQL."""
        try:
            if end >= self.size:
                await asyncio.to_thread(self._reset_sync)
                return
            await asyncio.to_thread(write_atomic, self.offset_path, f"{end}\n".encode())
        except OSError as exc:
            # Disk full: the offset lives in memory until it can be saved. A crash
            # meanwhile replays from the last saved offset; the keys make that a no-op.
            if str(exc) != self._commit_error:
                log.warning(
                    "spool_offset_not_saved",
                    path=str(self.offset_path),
                    error=str(exc),
                    action="kept in memory; a restart would resend (harmlessly)",
                )
                self._commit_error = str(exc)
        else:
            self._commit_error = None
        self.offset = end

    def _reset_sync(self) -> None:
        # The offset must never point into a file that was truncated and refilled:
        # drop it first. A crash between the two steps replays old records, which
        # the idempotency keys turn into no-ops.
        if self.offset_path.exists():
            self.offset_path.unlink()
        os.truncate(self.path, 0)
        self._set_aside_at.clear()
        self.size = 0
        self.offset = 0

    async def reject(self, ops: list[WriteOp]) -> None:
        """Set aside writes PostgreSQL refuses (kept on disk, never silently dropped)."""
        await asyncio.to_thread(_encode_and_append, self.rejected_path, ops)

    async def _set_aside(self, line: bytes, offset: int, exc: BaseException) -> bool:
        """Copy an unreadable line to the rejected file, reported once; False if that failed."""
        if offset in self._set_aside_at:
            return True  # a replay after a failed send: already kept and reported
        try:
            number = await asyncio.to_thread(_line_number, self.path, offset)
            await asyncio.to_thread(append_durable, self.rejected_path, line)
        except OSError as exc_io:
            if str(exc_io) == self._aside_error:
                return False  # said already; the next read tries again
            self._aside_error = str(exc_io)
            log.error(
                "spool_record_not_set_aside",
                path=str(self.path),
                offset=offset,
                error=str(exc_io),
                action="left in the spool; retried later",
            )
            return False
        self._set_aside_at.add(offset)
        self._aside_error = None
        log.error(
            "spool_record_unreadable",
            path=f"{self.path}:{number}",
            error=_short(exc),
            kept_in=str(self.rejected_path),
        )
        return True


def _line_number(path: Path, offset: int) -> int:
    """1-based number of the line starting at byte `offset` (blocking; rare, so a scan)."""
    newlines = 0
    with path.open("rb") as fh:
        left = offset
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            left -= len(chunk)
    return newlines + 1


def _short(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:200]
