"""Sending the outbox: each receiver gets its pending messages in order, once each.

One task per receiver, so a receiver that is down delays only itself. A failed send is
retried, the same message first, with exponential backoff. At most `rate_per_minute`
notifications go to a receiver in any rolling minute: when more are pending than that
allows, the last notification the budget has left is one digest standing for all of them
(the burst of a partition reads as a few lines, not as 40 pings).

A receiver with an `async refresh()` (Alertmanager: alerts that expire unless re-posted)
has it called from its own task, between sends, so never in the middle of the order: once
when its backlog is first sent, then every `refresh_interval` seconds. A failed refresh is
reported like a failed send and tried again an interval later. A receiver's `close()`, if
it has one, is called when the delivery stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from clawd.serve.alerts.message import DIGEST_EVENT, Message, digest_of
from clawd.serve.alerts.outbox import Outbox, OutboxError
from clawd.serve.alerts.receivers import DeliveryError, Receiver

log = structlog.get_logger("clawd.serve.alerts")

RATE_WINDOW = 60.0
FAILURE_LOG_INTERVAL = 600.0  # a receiver down for a day: a line per 10 min, not per retry
POLL_INTERVAL = 30.0  # a wake() that was missed costs at most this long
STOP_GRACE = 5.0  # a send in flight at stop() may finish within this; then it is cancelled
REFRESH_INTERVAL = 600.0


def _method(receiver: Receiver, name: str) -> Callable[[], Awaitable[None]] | None:
    """The receiver's optional `async refresh()` or `async close()`."""
    method = getattr(receiver, name, None)
    return method if callable(method) else None


@dataclass
class _State:
    receiver: Receiver
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: deque[float] = field(default_factory=deque)  # monotonic, within the window
    pending: int = 0
    delivered: int = 0  # messages, a digest counting all it stands for
    sent: int = 0  # notifications, a digest counting one
    failures: int = 0  # in a row
    failing_since: datetime | None = None
    failing_since_mono: float = 0.0
    failure_logged: float | None = None
    last_error: str | None = None
    outbox_error_logged: float | None = None
    next_refresh: float | None = None  # monotonic; None: at the end of the first backlog


class Delivery:
    """Delivers the outbox to `receivers` until `stop()`; `wake()` after an append."""

    def __init__(
        self,
        outbox: Outbox,
        receivers: Sequence[Receiver],
        *,
        rate_per_minute: int = 20,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        rate_window: float = RATE_WINDOW,
        failure_log_interval: float = FAILURE_LOG_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
        stop_grace: float = STOP_GRACE,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        self._outbox = outbox
        self._states: list[_State] = []
        for receiver in receivers:
            # One URL twice would be one cursor moved twice per message.
            if any(s.receiver.id == receiver.id for s in self._states):
                log.warning("alerts_receiver_duplicate", receiver=receiver.name)
                continue
            self._states.append(_State(receiver))
        self._rate = rate_per_minute
        self._retry_initial = retry_initial
        self._retry_max = max(retry_max, retry_initial)
        self._window = rate_window
        self._failure_log_interval = failure_log_interval
        self._poll_interval = poll_interval
        self._stop_grace = stop_grace
        self._refresh_interval = refresh_interval
        self._stopping = asyncio.Event()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Register the receivers with the outbox, then deliver until `stop()`."""
        if self._stopping.is_set():
            return
        await asyncio.to_thread(self._register)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._deliver(s), name=f"alerts-{s.receiver.id}")
                    for s in self._states
                ]
                if ready is not None:
                    ready.set()
                await self._stopping.wait()
                if tasks:
                    _, late = await asyncio.wait(tasks, timeout=self._stop_grace)
                    for task in late:
                        task.cancel()  # a send that outlived the grace: sent again next run
        finally:
            # The next Delivery (after a reload) may have fewer receivers: one removed
            # must not hold the outbox's compaction back.
            await asyncio.to_thread(self._unregister)
            await self._close_receivers()

    async def _close_receivers(self) -> None:
        for state in self._states:
            close = _method(state.receiver, "close")
            if close is None:
                continue
            try:
                async with asyncio.timeout(self._stop_grace):
                    await close()
            except Exception as exc:
                log.warning(
                    "alerts_receiver_close_failed",
                    receiver=state.receiver.name,
                    error=type(exc).__name__,
                )

    def _register(self) -> None:
        for state in self._states:
            self._outbox.register(state.receiver.id)

    def _unregister(self) -> None:
        for state in self._states:
            self._outbox.unregister(state.receiver.id)

    def stop(self) -> None:
        self._stopping.set()
        for state in self._states:
            state.wake.set()

    def wake(self) -> None:
        """New messages are in the outbox: deliver them now."""
        for state in self._states:
            state.wake.set()

    def status(self) -> list[dict[str, Any]]:
        """Per receiver: pending count, failing since, last error, messages delivered."""
        return [
            {
                "receiver": s.receiver.name,
                "pending": s.pending,
                "failing_since": s.failing_since.isoformat() if s.failing_since else None,
                "last_error": s.last_error,
                "delivered": s.delivered,
                "sent": s.sent,
            }
            for s in self._states
        ]

    # -- one receiver

    async def _deliver(self, state: _State) -> None:
        rid = state.receiver.id
        refresh = _method(state.receiver, "refresh")
        while not self._stopping.is_set():
            state.wake.clear()  # before looking: a wake() from here on is not lost
            due = state.next_refresh is not None and _now() >= state.next_refresh
            if refresh is not None and due:
                await self._refresh(state, refresh)
            try:
                state.pending = await asyncio.to_thread(self._outbox.pending_count, rid)
                if not state.pending:
                    if refresh is not None and state.next_refresh is None:
                        await self._refresh(state, refresh)  # the backlog is sent
                        continue
                    await _wait(state.wake, self._until_refresh(state, self._poll_interval))
                    continue
                budget = self._budget(state)
                if budget == 0:
                    # Only time frees the budget; new messages wait with the rest.
                    freed = state.sent_at[0] + self._window - _now()
                    await _wait(self._stopping, self._until_refresh(state, freed))
                    continue
                one = state.pending <= budget or budget > 1
                batch = await asyncio.to_thread(self._outbox.pending, rid, 1 if one else None)
            except OutboxError as exc:
                self._outbox_failed(state, exc)
                await _wait(self._stopping, self._retry_max)
                continue
            if not batch:
                continue  # the outbox was read again from disk meanwhile
            message = batch[0] if one or len(batch) == 1 else digest_of(batch)
            if not await self._send(state, message):
                await _wait(self._stopping, self._until_refresh(state, self._backoff(state)))
                continue
            await self._delivered(state, message, len(batch))

    def _until_refresh(self, state: _State, seconds: float) -> float:
        """`seconds`, or less if the receiver's next refresh is due sooner."""
        if state.next_refresh is None:
            return seconds
        return min(seconds, state.next_refresh - _now())

    async def _refresh(self, state: _State, refresh: Callable[[], Awaitable[None]]) -> None:
        state.next_refresh = _now() + self._refresh_interval
        try:
            await refresh()
        except DeliveryError as exc:
            self._failed(state, str(exc))
            return
        except Exception as exc:
            self._failed(state, f"unexpected {type(exc).__name__}")  # as in _send
            return
        self._answered(state)
        log.debug("alerts_refreshed", receiver=state.receiver.name)

    def _budget(self, state: _State) -> int:
        horizon = _now() - self._window
        while state.sent_at and state.sent_at[0] <= horizon:
            state.sent_at.popleft()
        return max(self._rate - len(state.sent_at), 0)

    def _backoff(self, state: _State) -> float:
        exponent = min(max(state.failures - 1, 0), 60)  # 2**60 s is past any retry_max
        return min(self._retry_initial * 2.0**exponent, self._retry_max)

    async def _send(self, state: _State, message: Message) -> bool:
        try:
            await state.receiver.send(message)
        except DeliveryError as exc:
            self._failed(state, str(exc))
            return False
        except Exception as exc:
            # A receiver's bug must not end its delivery. Only the type is shown: the
            # text of an arbitrary exception may hold the URL.
            self._failed(state, f"unexpected {type(exc).__name__}")
            return False
        state.sent_at.append(_now())
        self._answered(state)
        return True

    def _answered(self, state: _State) -> None:
        if state.failing_since is not None:
            log.info(
                "alerts_receiver_recovered",
                receiver=state.receiver.name,
                after_s=round(_now() - state.failing_since_mono, 1),
            )
        state.failures, state.failing_since, state.failure_logged = 0, None, None

    def _failed(self, state: _State, reason: str) -> None:
        now = _now()
        state.failures += 1
        state.last_error = reason
        if state.failing_since is None:
            state.failing_since = datetime.now(UTC)
            state.failing_since_mono = now
        if state.failure_logged is None or now - state.failure_logged >= (
            self._failure_log_interval
        ):
            state.failure_logged = now
            log.warning(
                "alerts_delivery_failed",
                receiver=state.receiver.name,
                error=reason,
                retry_in_s=round(self._backoff(state), 1),
                failing_for_s=round(now - state.failing_since_mono, 1),
            )

    async def _delivered(self, state: _State, message: Message, count: int) -> None:
        state.sent += 1
        state.delivered += count
        state.pending = max(state.pending - count, 0)
        digest = message.event == DIGEST_EVENT
        (log.info if digest else log.debug)(
            "alerts_delivered",
            receiver=state.receiver.name,
            kind=message.event,
            key=message.key,
            **({"covers": count} if digest else {}),
        )
        try:
            await asyncio.to_thread(self._outbox.delivered, state.receiver.id, count)
        except OutboxError as exc:
            # The cursor moved in memory all the same: not sent again in this run (a
            # restart before it can be saved sends it once more).
            self._outbox_failed(state, exc)

    def _outbox_failed(self, state: _State, exc: OutboxError) -> None:
        now = _now()
        logged = state.outbox_error_logged
        if logged is None or now - logged >= self._failure_log_interval:
            state.outbox_error_logged = now
            log.error("alerts_outbox_failed", receiver=state.receiver.name, error=str(exc))


def _now() -> float:
    return time.monotonic()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0.0)):
            await event.wait()
