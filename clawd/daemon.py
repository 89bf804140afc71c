"""Wiring: one event loop, one TaskGroup, signals, readiness, ordered shutdown."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog

from clawd.model import Instance
from clawd.notify import Notifier
from clawd.settings import Settings
from clawd.store.factory import build_repository
from clawd.store.migrations import install_migration_files
from clawd.store.repository import FleetRepository

log = structlog.get_logger("clawd.daemon")

SHUTDOWN_FLUSH_SECONDS = 5.0


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._forced = False

    def request_stop(self, signame: str = "SIGTERM") -> None:
        """Signal handler: first request stops gracefully, a second one forces exit."""
        if self._stop.is_set():
            log.warning("stop_forced", signal=signame)
            self._forced = True
            raise SystemExit(1)
        log.info("stop_requested", signal=signame)
        self._stop.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        # Reload and backup arrive with later components; acknowledge them now.
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.info("reload_requested", signal="SIGHUP")
        )
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: log.info("backup_requested", signal="SIGUSR1")
        )

    async def _register_static_peers(self, repo: FleetRepository) -> None:
        known = repo.snapshot().instances
        for peer in self.settings.peers:
            gateway_id = peer.gateway_id or peer.name
            if gateway_id in known:
                continue
            await repo.upsert_instance(
                Instance(
                    gateway_id=gateway_id,
                    name=peer.name,
                    ip=peer.ip,
                    ssh_user=peer.ssh_user or self.settings.instance.ssh_user,
                    ssh_port=peer.ssh_port,
                )
            )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        repo = build_repository(self.settings)
        loaded = await repo.open()
        await asyncio.to_thread(install_migration_files, self.settings.home)
        for path in loaded.quarantined:
            log.warning("peer_file_set_aside", path=str(path))
        await self._register_static_peers(repo)
        try:
            async with asyncio.TaskGroup() as tg:
                repo_ready = asyncio.Event()
                tg.create_task(repo.run(repo_ready), name="repository")
                await repo_ready.wait()
                snapshot = repo.snapshot()
                log.info(
                    "ready",
                    backend=self.settings.backend,
                    home=str(self.settings.home),
                    gateway=self.settings.instance.gateway_id,
                    peers=len(snapshot.peers),
                    postgres=self._pg_state(repo),
                )
                self.notifier.send("READY=1", f"STATUS={len(snapshot.peers)} peers known")
                await self._stop.wait()
                self.notifier.send("STOPPING=1")
                await self._flush(repo)
                repo.stop()
        finally:
            await repo.close()
        log.info("stopped")
        return 0

    @staticmethod
    def _pg_state(repo: FleetRepository) -> str:
        if repo.sink is None:
            return "off"
        return "connected" if repo.sink.connected else "unavailable (spooling)"

    async def _flush(self, repo: FleetRepository) -> None:
        try:
            await asyncio.wait_for(repo.flush(), SHUTDOWN_FLUSH_SECONDS)
        except TimeoutError:
            log.error(
                "shutdown_flush_timeout",
                seconds=SHUTDOWN_FLUSH_SECONDS,
                note="pending writes stay in the spool and are sent at next start",
            )
