"""Telling people: incidents become notifications in the outbox, delivered to every
receiver (`notify.apprise`), once each, surviving restarts and receiver outages.

Where they come from: with backend postgres and the lease, the fleet's record -- the
acting leader sends each incident_log row once for the whole fleet (alerts/feed.py);
otherwise (backend json, or the lease off) each instance sends what it recorded itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from clawd.config.settings import Settings, lease_on
from clawd.core.errors import ClawdError
from clawd.core.model import Incident, new_key, utcnow
from clawd.core.text import printable
from clawd.serve.alerts.alertmanager import AlertmanagerReceiver
from clawd.serve.alerts.delivery import Delivery
from clawd.serve.alerts.feed import IncidentFeed
from clawd.serve.alerts.from_incidents import message_for
from clawd.serve.alerts.message import Message
from clawd.serve.alerts.outbox import Outbox
from clawd.serve.alerts.receivers import Receiver, redact_url
from clawd.serve.alerts.silences import SILENCED, Silence, read_file, silencing

log = structlog.get_logger("clawd.serve.alerts")

OUTBOX_DIR = "alerts"
SILENCES_POLL_SECONDS = 1.0


def build_receivers(settings: Settings) -> list[Receiver]:
    """A receiver per Apprise and Alertmanager URL; one that cannot be used is logged
    (redacted) and left out."""
    receivers: list[Receiver] = []
    urls = settings.notify.urls()
    if urls:  # apprise loads every plugin it has: only when there is an Apprise URL
        from clawd.serve.alerts.apprise_receiver import AppriseReceiver
    for url in urls:
        try:
            receivers.append(AppriseReceiver(url))
        except ValueError:
            log.warning("alerts_receiver_invalid", receiver=redact_url(url))
    state = settings.home / OUTBOX_DIR
    for url in settings.notify.alertmanager_urls():
        try:
            receivers.append(
                AlertmanagerReceiver(url, fleet=settings.notify.fleet, state_dir=state)
            )
        except ValueError:
            log.warning("alerts_receiver_invalid", receiver=redact_url(url))
    return receivers


class AlertService:
    """The outbox and its delivery, fed by the fleet's record or by this instance."""

    name = "alerts"

    def __init__(self, settings: Settings, home: Path) -> None:
        self.settings = settings
        self.outbox_dir = home / OUTBOX_DIR
        self._outbox: Outbox | None = None
        self._delivery: Delivery | None = None
        self._local: asyncio.Queue[Incident] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._restart = asyncio.Event()
        self.feed = IncidentFeed(self.offer)
        self.home = home
        self._silences: list[Silence] = []  # backend json: <home>/silences.json, re-read
        # What this machine tells of itself (its backups), straight to the outbox.
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self._backup_error: str | None = None

    # -- what to tell

    def _wanted(self, incident: Incident) -> bool:
        return incident.event_type in self.settings.notify.events

    def _tells_locally(self) -> bool:
        return not lease_on(self.settings)

    def silence_local(self, incident: Incident) -> None:
        """The recorder's annotator: an incident a local silence covers is recorded with its
        id (with the fleet's record, its leader flags the row when it would tell)."""
        if self._tells_locally():
            silence = silencing(self._silences, incident)
            if silence is not None:
                incident.details[SILENCED] = silence.id

    def local_incident(self, incident: Incident) -> None:
        """The recorder's listener: what this instance recorded. Told only when there is no
        fleet record to tell from (its leader tells the fleet's)."""
        if not self._tells_locally() or SILENCED in incident.details:
            if SILENCED in incident.details:
                log.info(
                    "alerts_silenced",
                    gateway=incident.gateway_id,
                    incident=incident.event_type.value,
                    silence=incident.details[SILENCED],
                )
            return
        if self.settings.notify.enabled and self._wanted(incident):
            self._local.put_nowait(incident)

    async def offer(self, incidents: Sequence[Incident]) -> None:
        """Into the outbox (fsynced) before the caller marks them told."""
        if self._outbox is None or not self.settings.notify.enabled:
            return  # nobody to tell: marked all the same, no flood when receivers come
        outbox = self._outbox
        messages = [message_for(i) for i in incidents if self._wanted(i)]
        if not messages:
            return
        await asyncio.to_thread(lambda: [outbox.append(m) for m in messages])
        if self._delivery is not None:
            self._delivery.wake()

    def backups_changed(self, last_error: str | None) -> None:
        """The backup manager's state changed: tell of a failure once (a new error is a new
        failure), and of the first good backup after one."""
        if not (self.settings.notify.enabled and self.settings.notify.backups):
            self._backup_error = last_error
            return
        was, self._backup_error = self._backup_error, last_error
        if last_error == was:
            return
        me = self.settings.instance.name or self.settings.instance.gateway_id
        now = utcnow()
        if last_error is not None:
            title, body, event = f"clawd: backup failed on {me}", last_error, "backup_failed"
        elif was is not None:
            title, body, event = f"clawd: backups work again on {me}", "", "backup_ok"
        else:
            return
        at = now.isoformat(timespec="seconds")
        message = Message(
            key=f"backup-{new_key()}",
            event=event,
            title=title,
            body="\n".join(line for line in (printable(body), f"At {at}.") if line),
            at=now,
            gateway=self.settings.instance.gateway_id,
        )
        self._messages.put_nowait(message)

    # -- component

    async def run(self, ready: asyncio.Event) -> None:
        self._outbox = await asyncio.to_thread(Outbox, self.outbox_dir)
        ready.set()
        while not self._stopping.is_set():
            self._restart.clear()
            # In a thread: the first Apprise URL imports apprise and all its plugins.
            receivers = await asyncio.to_thread(build_receivers, self.settings)
            n = self.settings.notify
            delivery = Delivery(
                self._outbox,
                receivers,
                rate_per_minute=n.rate_per_minute,
                retry_max=n.retry_max_seconds,
            )
            self._delivery = delivery
            tasks = [
                asyncio.create_task(delivery.run(), name="alerts-delivery"),
                asyncio.create_task(self._take_local(), name="alerts-local"),
                asyncio.create_task(self._read_silences(), name="alerts-silences"),
                asyncio.create_task(self._take_messages(), name="alerts-messages"),
            ]
            waits = [
                asyncio.create_task(self._stopping.wait()),
                asyncio.create_task(self._restart.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                delivery.stop()
                for task in (*waits, *tasks[1:]):
                    task.cancel()
                for task in (*tasks, *waits):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self._delivery = None

    async def _read_silences(self) -> None:
        """Backend json: `clawd silence add` writes the file; in force within a poll."""
        warned = False
        while True:
            if self._tells_locally():
                try:
                    self._silences = await asyncio.to_thread(read_file, self.home)
                    warned = False
                except (OSError, ValueError) as exc:
                    if not warned:  # the last good list stays in force
                        log.warning("alerts_silences_unreadable", error=str(exc))
                        warned = True
            await asyncio.sleep(SILENCES_POLL_SECONDS)

    async def _take_local(self) -> None:
        while True:
            incident = await self._local.get()
            try:
                await self.offer([incident])
            except (OSError, ClawdError) as exc:  # the home's disk: this one is not told
                log.warning("alerts_outbox_failed", error=str(exc), key=str(incident.key))

    async def _take_messages(self) -> None:
        while True:
            message = await self._messages.get()
            if self._outbox is None:
                continue
            try:
                await asyncio.to_thread(self._outbox.append, message)
            except (OSError, ClawdError) as exc:
                log.warning("alerts_outbox_failed", error=str(exc), key=message.key)
                continue
            if self._delivery is not None:
                self._delivery.wake()

    def stop(self) -> None:
        self._stopping.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        self.settings = settings
        if "notify" in changed:
            self._restart.set()  # new receivers or limits: delivery starts again with them

    def status(self) -> list[dict[str, Any]]:
        return list(self._delivery.status()) if self._delivery is not None else []
