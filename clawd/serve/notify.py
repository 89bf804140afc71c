"""systemd's notify protocol (Type=notify): readiness, status, watchdog, reload, stop.

A no-op outside systemd (no NOTIFY_SOCKET).
"""

from __future__ import annotations

import asyncio
import os
import time

import sdnotify

from clawd.config.settings import Settings


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self._status: str | None = None

    def send(self, *fields: str) -> None:
        """Send `fields` (e.g. "READY=1", "STATUS=…") in one datagram."""
        if self._notifier is not None:
            self._notifier.notify("\n".join(fields))

    def status(self, text: str) -> None:
        """STATUS= only when it changed, so a busy fleet does not spam systemd."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def reloading(self) -> None:
        # Newer systemd waits for MONOTONIC_USEC in the same datagram;
        # without it `systemctl reload` hangs.
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC, when the watchdog is armed for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not self.enabled or not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2 / 1_000_000
        except ValueError:
            return None


class Watchdog:
    """Pets systemd's watchdog from the event loop itself: a stalled loop stops the petting
    and systemd restarts the service. The daemon cancels it last, after everything else."""

    name = "watchdog"

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._stopping = False

    async def run(self, ready: asyncio.Event) -> None:
        interval = self.notifier.watchdog_interval()
        ready.set()
        if interval is None:
            return
        while not self._stopping:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def stop(self) -> None:
        self._stopping = True

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """WATCHDOG_USEC comes from systemd, not from config.json."""
