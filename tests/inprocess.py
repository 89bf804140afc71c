"""The real daemon in the test's own event loop: built from a config.json the way `clawd run`
builds it, without a subprocess (no interpreter start-up, no log scraping).

Like arq's worker fixture: `InProcessDaemons.start(config)` writes config.json into a home,
loads it with `load_in_force` (what `clawd run` does), runs `Daemon.run()` as a task and
returns once the daemon is ready, with its parts at hand. Every daemon started is stopped at
teardown; one that does not stop within `STOP_SECONDS` fails the test.

What differs from `clawd run`: logging is not configured (structlog's defaults, reset by
conftest after each test) and the daemon's signal handlers are on the test's loop while it
runs (the daemon removes them at exit; the previous handlers are put back here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sshpeers import SshFleet, SshPeer

from clawd.config.reload import load_in_force
from clawd.daemon.app import Daemon
from clawd.daemon.build import Parts
from clawd.daemon.signals import HANDLED
from clawd.decide.view import FleetView
from clawd.keep.keeper import FleetKeeper
from clawd.keep.store.repository import FleetRepository
from clawd.serve import control
from clawd.serve.control import socket_path

START_SECONDS = 20.0
STOP_SECONDS = 5.0  # what SIGTERM promises: the daemon exits within 5 s

SignalHandler = Callable[[int, Any], Any] | int | signal.Handlers | None
# What the process-level handler is while a loop handles the signal (add_signal_handler).
_loop_handler = getattr(asyncio.unix_events, "_sighandler_noop", None)


def peers_config(
    fleet: SshFleet, peers: Mapping[str, SshPeer], *, interval: float = 0.3
) -> dict[str, Any]:
    """A config for gateway gw-a pinging `peers` (gateway id -> asyncssh peer), no mDNS."""
    (fleet.directory / "known_hosts").write_text(fleet.known_hosts_text())
    return {
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 5, "sshUser": "claw"},
        "peers": [
            {
                "name": f"name-{gid}",
                "gatewayId": gid,
                "ip": peer.address,
                "sshPort": peer.port,
                "sshUser": "claw",
                "leadNumber": lead,
            }
            for lead, (gid, peer) in enumerate(peers.items(), start=10)
        ],
        "ping": {"intervalSeconds": interval, "timeoutSeconds": 0.25, "offlineAfterMissed": 3},
        "ssh": {
            "knownHosts": str(fleet.directory / "known_hosts"),
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 0.5,
        },
        "discovery": {"enabled": False},
        "storage": {"flushIntervalSeconds": 0.05, "retryInitialSeconds": 0.2},
    }


def write_config(home: Path, config: Mapping[str, Any]) -> Path:
    """config.json in `home`, replaced as editors do (write aside, rename over)."""
    home.mkdir(parents=True, exist_ok=True)
    aside = home / ".config.json.swp"
    aside.write_text(json.dumps(config))
    path = home / "config.json"
    aside.replace(path)
    return path


@dataclass
class RunningDaemon:
    """A daemon running in this loop, and the parts a test looks at."""

    home: Path
    daemon: Daemon
    task: asyncio.Task[int]

    @property
    def parts(self) -> Parts:
        return self.daemon.parts

    @property
    def keeper(self) -> FleetKeeper:
        return self.parts.keeper

    @property
    def view(self) -> FleetView:
        return self.parts.keeper.view

    @property
    def repo(self) -> FleetRepository:
        return self.parts.repo

    @property
    def control_socket(self) -> Path:
        return socket_path(self.home)

    async def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """What `clawd CMD` asks over the control socket, and the daemon's answer."""
        return await control.request(self.home, cmd, wait_seconds=5.0, **args)

    async def write_config(self, config: Mapping[str, Any]) -> None:
        await asyncio.to_thread(write_config, self.home, config)

    async def stop(self, timeout: float = STOP_SECONDS) -> int:
        """Ask for a graceful stop (what SIGTERM does); the exit code. TimeoutError if the
        daemon is still running after `timeout` seconds (it is then cancelled)."""
        if not self.task.done():
            self.daemon.signals.on_stop("test")
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self.task)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
            raise


@dataclass
class InProcessDaemons:
    """Starts daemons in homes under `root`; `close()` stops whatever still runs."""

    root: Path
    running: list[RunningDaemon] = field(default_factory=list)
    _handlers: dict[signal.Signals, SignalHandler] = field(default_factory=dict)

    async def start(self, config: Mapping[str, Any], name: str = "home") -> RunningDaemon:
        home = self.root / name
        path = await asyncio.to_thread(write_config, home, config)
        settings, document = await asyncio.to_thread(load_in_force, path, check_files=True)
        if not self._handlers:
            self._handlers = {sig: signal.getsignal(sig) for sig in HANDLED}
        daemon = Daemon(settings, document, path)
        task = asyncio.create_task(daemon.run(), name=f"clawd-daemon-{name}")
        running = RunningDaemon(home, daemon, task)
        self.running.append(running)
        ready = asyncio.ensure_future(daemon.ready.wait())
        try:
            done, _ = await asyncio.wait(
                {task, ready}, timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if task in done:
            self.running.remove(running)  # it has ended: the failure is the caller's
            task.result()  # raises what stopped the start
            raise AssertionError(f"the daemon in {home} exited before it was ready")
        if ready not in done:
            raise AssertionError(f"the daemon in {home} was not ready within {START_SECONDS}s")
        return running

    async def close(self) -> list[str]:
        """Stop every daemon still running; what went wrong (empty when all is well)."""
        problems: list[str] = []
        for running in self.running:
            try:
                code = await running.stop()
            except TimeoutError:
                problems.append(f"the daemon in {running.home} did not stop in {STOP_SECONDS}s")
                continue
            except Exception as exc:  # reported as the test's failure
                problems.append(f"the daemon in {running.home} failed: {exc!r}")
                continue
            if code != 0:
                problems.append(f"the daemon in {running.home} exited {code}")
        for sig, handler in self._handlers.items():
            # The daemon removes its handlers at exit; one still on the loop is a leak.
            if signal.getsignal(sig) is _loop_handler:
                problems.append(f"the daemon left its {sig.name} handler on the loop")
            # Removing resets to the default handler: put back what this process had.
            # Not SIGINT: asyncio.Runner (pytest-asyncio's) installs its own for each run.
            if sig is not signal.SIGINT:
                signal.signal(sig, handler)
        return problems
