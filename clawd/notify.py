"""systemd's notify protocol (Type=notify), a no-op outside systemd."""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None

    def send(self, *fields: str) -> None:
        """Send `fields` (e.g. "READY=1", "STATUS=…") in one datagram."""
        if self._notifier is not None:
            self._notifier.notify("\n".join(fields))
