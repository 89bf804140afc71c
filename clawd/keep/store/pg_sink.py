"""Delivers writes to PostgreSQL through the spool, surviving outages.

Callers hand over ops without waiting for the database. One task batches them,
appends each batch to the spool, sends it, and marks it sent. While PostgreSQL
is away the batches pile up in the spool and are replayed in order, with
backoff between connection attempts, once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from clawd.config.sections import StorageSettings
from clawd.core.errors import DatabaseError, DatabaseUnavailable, StoreError
from clawd.keep.store.ops import WriteOp, op_rows
from clawd.keep.store.pg_store import PgStore
from clawd.keep.store.spool import Spool

log = structlog.get_logger("clawd.keep.store.sink")

Connector = Callable[[], Awaitable[PgStore]]

# Writes waiting longer than this (and this many flush intervals) count as a stall.
STALL_MIN_SECONDS = 5.0
STALL_CYCLES = 5


class PgSink:
    """Ordered, durable, at-least-once (idempotent, so exactly-once) delivery."""

    def __init__(self, connect: Connector, spool: Spool, storage: StorageSettings) -> None:
        self._connect = connect
        self._spool = spool
        self._storage = storage
        self._queue: deque[WriteOp] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._space = asyncio.Event()
        self._space.set()
        self._store: PgStore | None = None
        self._closing = False
        self._submitted = 0  # sequence number of the last submitted op
        self._durable = 0  # ... of the last op in the spool
        self._delivered = 0  # ... of the last op known to be in PostgreSQL
        self._next_attempt = 0.0
        self._backoff = storage.retry_initial_seconds
        self._last_error: str | None = None
        self._outage_started: float | None = None
        self._spool_error: str | None = None  # the spool write failing right now
        self._progress_at = time.monotonic()  # last delivery, or last time nothing waited
        self.rows_delivered = 0
        self.rows_lost = 0  # dropped at shutdown: neither spool nor PostgreSQL took them
        # Called when describe() changes (the daemon refreshes systemd's STATUS=).
        self.on_change: Callable[[], None] | None = None
        self._described = self.describe()

    # -- what callers use -------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._store is not None

    @property
    def backlog_bytes(self) -> int:
        return self._spool.pending_bytes

    @property
    def pending_rows(self) -> int:
        """Rows held in memory only: neither in the spool nor in PostgreSQL yet."""
        return self._queued_rows

    @property
    def spool_failing(self) -> bool:
        return self._spool_error is not None

    def waiting_seconds(self) -> float:
        """How long writes have waited without any reaching PostgreSQL; 0 if none wait."""
        if not self._queue and not self._spool.pending_bytes:
            return 0.0
        return max(0.0, time.monotonic() - self._progress_at)

    @property
    def stalled(self) -> bool:
        """Writes have waited longer than a healthy sink ever makes them wait."""
        limit = max(STALL_MIN_SECONDS, STALL_CYCLES * self._storage.flush_interval_seconds)
        return self.waiting_seconds() > limit

    def describe(self) -> str:
        """One phrase for `clawd status` and systemd's STATUS=."""
        rows = self._queued_rows
        if self._store is None:
            if self._spool_error is not None:
                return (
                    f"unavailable; spool not writable ({self._spool_error}): "
                    f"{rows} rows held in memory only"
                )
            return "unavailable (spooling)"
        if self._spool_error is not None:
            return (
                f"connected; spool not writable ({self._spool_error}): writes go to "
                f"PostgreSQL directly, {rows} rows held in memory"
            )
        if self.stalled:
            waited = self.waiting_seconds()
            return f"connected; writes stalled for {waited:.0f} s ({rows} rows waiting)"
        return "connected"

    async def submit(self, op: WriteOp) -> None:
        """Queue `op`; waits only when the in-memory queue is full (backpressure)."""
        while not self._space.is_set():
            await self._space.wait()
        self._queue.append(op)
        self._queued_rows += op_rows(op)
        self._submitted += 1
        if self._queued_rows >= self._storage.queue_max_rows:
            self._space.clear()
        if self._queued_rows >= self._storage.batch_max_rows:
            self._wake.set()

    async def flush(self) -> None:
        """Return once everything submitted so far is in PostgreSQL, or safe in the
        spool while PostgreSQL is unavailable."""
        target = self._submitted
        async with self._progress:
            self._wake.set()
            await self._progress.wait_for(
                lambda: (
                    self._durable >= target and (self._delivered >= target or self._store is None)
                )
            )

    # -- the delivery task ------------------------------------------------

    async def open(self) -> None:
        """Open the spool; anything a previous run left there is sent first."""
        await self._spool.open()

    async def preload(self, ops: list[WriteOp]) -> None:
        """Put `ops` durably in the spool now, ahead of anything submitted later."""
        if not ops:
            return
        try:
            await self._spool.append(ops)
        except StoreError as exc:
            # A full disk must not stop the start: they go first from memory instead.
            self._note_spool_failure(str(exc))
            self._submitted += len(ops)
            self._requeue(ops)

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()  # writes are spooled; the daemon never waits for PostgreSQL
        await self._try_connect()
        while True:
            if not self._queue and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), timeout=self._storage.flush_interval_seconds
                    )
            self._wake.clear()
            await self._cycle()
            self._report_change()
            if self._closing and not self._queue:
                return

    async def close(self) -> None:
        """Close the connection pool; call after run() returned (see stop())."""
        if self._store is not None:
            await self._store.close()
            self._store = None

    def stop(self) -> None:
        """Ask run() to deliver what is queued (or spool it) and return."""
        self._closing = True
        self._wake.set()

    async def _cycle(self) -> None:
        fresh: tuple[list[WriteOp], int] | None = None
        taken = self._take_batch()
        if taken is not None:
            ops, last_seq = taken
            try:
                start, end = await self._spool.append(ops)
            except StoreError as exc:
                await self._unspooled(ops, last_seq, str(exc))
                async with self._progress:
                    self._progress.notify_all()
                return
            if self._spool_error is not None:
                log.info("spool_write_recovered", path=str(self._spool.path))
                self._spool_error = None
            self._durable = last_seq
            if self._spool.offset == start:
                fresh = (ops, end)
        if self._store is None:
            await self._maybe_reconnect()
        if self._store is not None and self._spool.pending_bytes:
            await self._deliver_spool(fresh)
        if not self._queue and not self._spool.pending_bytes:
            self._progress_at = time.monotonic()
        async with self._progress:
            self._progress.notify_all()

    def _requeue(self, ops: list[WriteOp]) -> None:
        self._queue.extendleft(reversed(ops))
        self._queued_rows += sum(op_rows(o) for o in ops)
        if self._queued_rows >= self._storage.queue_max_rows:
            self._space.clear()

    def _note_spool_failure(self, reason: str) -> None:
        if reason != self._spool_error:
            log.error(
                "spool_write_failed",
                reason=reason,
                queued_rows=self._queued_rows,
                action="writes go to PostgreSQL directly while it is up, else wait in memory",
            )
            self._spool_error = reason

    async def _unspooled(self, ops: list[WriteOp], last_seq: int, reason: str) -> None:
        """The spool cannot be written (disk full, read-only): PostgreSQL need not wait
        for it. Older spooled writes go first, then this batch straight from memory; if
        PostgreSQL is away too, the batch waits in memory (bounded by backpressure)."""
        self._note_spool_failure(reason)
        if self._store is None:
            await self._maybe_reconnect()
        delivered = (
            self._store is not None and await self._deliver_spool(None) and await self._send(ops)
        )
        if delivered:
            self._durable = self._delivered = last_seq
            self.rows_delivered += sum(op_rows(o) for o in ops)
            self._progress_at = time.monotonic()
            return
        if self._closing and self._store is None:
            # Stopping with neither the disk nor PostgreSQL taking writes: say what is lost.
            lost = sum(op_rows(o) for o in ops) + self._queued_rows
            self.rows_lost += lost
            log.error("postgres_writes_lost", rows=lost, reason=reason)
            self._queue.clear()
            self._queued_rows = 0
            self._space.set()
            self._durable = self._delivered = self._submitted
            return
        self._requeue(ops)
        await asyncio.sleep(self._storage.retry_initial_seconds)

    def _report_change(self) -> None:
        described = self.describe()
        if described != self._described:
            self._described = described
            if self.on_change is not None:
                self.on_change()

    def _take_batch(self) -> tuple[list[WriteOp], int] | None:
        ops: list[WriteOp] = []
        rows = 0
        while self._queue and rows < self._storage.batch_max_rows:
            op = self._queue.popleft()
            ops.append(op)
            rows += op_rows(op)
        if not ops:
            return None
        self._queued_rows -= rows
        if self._queued_rows < self._storage.queue_max_rows:
            self._space.set()
        # Ops are numbered in submission order; the queue holds the newest ones.
        return ops, self._submitted - len(self._queue)

    async def _deliver_spool(self, fresh: tuple[list[WriteOp], int] | None) -> bool:
        """Send the spool from its offset on; a batch just appended is sent from memory.

        True when every complete line is sent (a torn last line may remain)."""
        replayed = 0
        caught_up = False
        while self._store is not None:
            if not self._spool.pending_bytes:
                caught_up = True
                break
            if fresh is not None:
                (ops, upto), fresh = fresh, None
            else:
                ops, upto = await self._spool.read(self._storage.batch_max_rows)
            if not ops and upto == self._spool.offset:
                caught_up = True
                break  # only a torn line is left
            if not await self._send(ops):
                break
            await self._spool.commit(upto)
            replayed += sum(op_rows(o) for o in ops)
            self._progress_at = time.monotonic()
        if not self._spool.pending_bytes:
            self._delivered = self._durable
        self.rows_delivered += replayed
        if self._outage_started is not None and not self._spool.pending_bytes:
            log.info(
                "postgres_caught_up",
                rows_replayed=replayed,
                outage_seconds=round(time.monotonic() - self._outage_started, 1),
            )
            self._outage_started = None
        return caught_up

    async def _send(self, ops: list[WriteOp]) -> bool:
        assert self._store is not None
        try:
            await self._store.apply(ops)
            return True
        except DatabaseUnavailable as exc:
            await self._lost(str(exc))
            return False
        except DatabaseError as exc:
            return await self._isolate_rejected(ops, exc)
        except Exception as exc:
            # Unknown failure: treat it as a lost connection (reconnect, back off,
            # resend from the spool) rather than let the delivery task die.
            await self._lost(f"unexpected {type(exc).__name__}: {exc}")
            return False

    async def _isolate_rejected(self, ops: list[WriteOp], exc: DatabaseError) -> bool:
        """One bad record must not block the rest: send one by one, set aside refusals."""
        rejected: list[WriteOp] = []
        for op in ops:
            if self._store is None:
                return False
            try:
                await self._store.apply([op])
            except DatabaseUnavailable as lost:
                await self._lost(str(lost))
                return False
            except DatabaseError as err:
                rejected.append(op)
                log.error("postgres_rejected_write", op=type(op).__name__, error=str(err))
        if rejected:
            await self._spool.reject(rejected)
            log.error(
                "postgres_writes_set_aside",
                count=len(rejected),
                path=str(self._spool.rejected_path),
                first_error=str(exc),
            )
        return True

    # -- connection management --------------------------------------------

    async def _try_connect(self) -> None:
        try:
            self._store = await self._connect()
        except DatabaseError as exc:
            await self._lost(str(exc))
            return
        if self._last_error is not None:
            log.info("postgres_reconnected", backlog_bytes=self._spool.pending_bytes)
        self._last_error = None
        self._backoff = self._storage.retry_initial_seconds

    async def _maybe_reconnect(self) -> None:
        if time.monotonic() >= self._next_attempt:
            await self._try_connect()

    async def _lost(self, reason: str) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()
        if self._outage_started is None:
            self._outage_started = time.monotonic()
        if reason != self._last_error:
            log.warning(
                "postgres_unavailable",
                reason=reason,
                action="writes are spooled and replayed when it is back",
                backlog_bytes=self._spool.pending_bytes,
            )
            self._last_error = reason
        delay = self._backoff * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
        self._next_attempt = time.monotonic() + delay
        self._backoff = min(self._backoff * 2, self._storage.retry_max_seconds)
