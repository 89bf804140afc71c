"""One event loop, one TaskGroup: the components start in their order, each waited for
until ready; on a stop they end in the reverse order. READY=1 goes to systemd once every
component said it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import structlog

from clawd.config.document import ConfigDocument
from clawd.config.settings import Settings, default_config_path
from clawd.core.errors import ClawdError
from clawd.daemon.build import Parts, assemble
from clawd.daemon.plan import Entry, Stop
from clawd.daemon.signals import Request, Signals
from clawd.serve.notify import Notifier

log = structlog.get_logger("clawd.daemon")

STOP_SOURCES_SECONDS = 2.0  # then in-flight pings are cancelled: SIGTERM exits within 5 s
START_SECONDS = 60.0
EXIT_FORCED = 1


def _first_leaf(group: BaseExceptionGroup[ClawdError]) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def _until_done(tasks: Collection[asyncio.Future[Any]], forced: asyncio.Event) -> None:
    """Until every task ended, or a forced exit came."""
    pending: set[asyncio.Future[Any]] = {t for t in tasks if not t.done()}
    if not pending or forced.is_set():
        return
    waiter = asyncio.ensure_future(forced.wait())
    try:
        while pending and not forced.is_set():
            _, pending = await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(waiter)
    finally:
        waiter.cancel()


class Daemon:
    def __init__(
        self, settings: Settings, document: ConfigDocument, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.document = document  # what `settings` were validated from (reload.load_in_force)
        self.config_path = config_path or default_config_path()
        self.notifier = Notifier()
        self.signals = Signals()
        self._parts: Parts | None = None
        self._reloads: set[asyncio.Task[object]] = set()
        # Set once every component is up (when `ready` is logged): what an in-process
        # caller (the tests' daemon fixture) waits for instead of reading the log.
        self.ready = asyncio.Event()

    @property
    def parts(self) -> Parts:
        """The built components; only while run() runs (after assemble)."""
        if self._parts is None:
            raise RuntimeError("the daemon is not running")
        return self._parts

    async def run(self) -> int:
        """0 after a graceful stop; 1 after a forced one (a second SIGTERM/SIGINT)."""
        loop = asyncio.get_running_loop()
        parts = await assemble(
            self.settings, self.document, self.config_path, self.notifier, self._reload_from
        )
        self._parts = parts
        self.signals.install(loop)
        try:
            await self._supervise(parts)
        finally:
            await parts.repo.close()
            self.signals.remove(loop)
        if self.signals.forced.is_set():
            return EXIT_FORCED
        log.info("stopped")
        return 0

    async def _reload_from(self, source: str) -> dict[str, Any]:
        assert self._parts is not None
        self.notifier.reloading()
        try:
            result = await self._parts.reloader.reload(source)
        finally:
            self.notifier.send("READY=1", f"STATUS={self._parts.status.text()}")
        return {"ok": result.ok, "changed": result.changed, "error": result.error}

    # -- start and stop -------------------------------------------------------

    async def _supervise(self, parts: Parts) -> None:
        s = self.settings
        try:
            async with asyncio.TaskGroup() as tg:
                starting = [(entry.component.name, asyncio.Event()) for entry in parts.entries]
                tasks = [
                    tg.create_task(entry.component.run(ready), name=name)
                    for entry, (name, ready) in zip(parts.entries, starting, strict=True)
                ]
                requests = tg.create_task(self._serve_requests(tg, parts), name="signals")
                if await self._started(starting):
                    log.info(
                        "ready",
                        backend=s.backend,
                        home=str(s.home),
                        gateway=s.instance.gateway_id,
                        peers=len(parts.keeper.view.peers),
                        postgres=parts.repo.sink_state(),
                    )
                    self.notifier.send("READY=1", f"STATUS={parts.status.text()}")
                    self.ready.set()
                await self.signals.stopping.wait()
                self.notifier.send("STOPPING=1")
                await self._shutdown(parts.entries, tasks)
                requests.cancel()
                if self.signals.forced.is_set():
                    for task in self._reloads:
                        task.cancel()
        except* ClawdError as group:
            # A component failed for a reason a person can fix (duplicate gateway
            # id, bad address): report it as such, not as a traceback.
            first = _first_leaf(group)
            log.error("component_failed", error=str(first))
            raise ClawdError(str(first)) from None

    async def _started(self, starting: Sequence[tuple[str, asyncio.Event]]) -> bool:
        """Wait for each component in order to be ready; False if a forced exit came first.

        A component that fails before it is ready fails the start at once: the task group
        cancels this wait."""
        forced = self.signals.forced
        for name, ready in starting:
            waiter = asyncio.ensure_future(ready.wait())
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the task
                # group's cancel when a component fails just as another gets ready, and
                # start would then wait for a component that is gone.
                async with asyncio.timeout(START_SECONDS):
                    await _until_done([waiter], forced)
            except TimeoutError:
                log.error("start_timeout", component=name, seconds=START_SECONDS)
                raise
            finally:
                waiter.cancel()
            if forced.is_set():
                return False
        return True

    async def _shutdown(
        self, entries: Sequence[Entry], tasks: Sequence[asyncio.Task[None]]
    ) -> None:
        """Stop taking in work, let in-flight work finish (bounded), flush, close: the list
        in reverse. After a forced exit whatever it would wait for is cancelled instead."""
        forced = self.signals.forced
        pending = list(zip(entries, tasks, strict=True))
        while pending:
            entry, task = pending.pop()
            if entry.stop is Stop.SOURCE:
                # The sources next to each other in the list stop together.
                group = [task]
                entry.component.stop()
                while pending and pending[-1][0].stop is Stop.SOURCE:
                    other, other_task = pending.pop()
                    other.component.stop()
                    group.append(other_task)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_SOURCES_SECONDS):
                        await _until_done(group, forced)
                for late in (t for t in group if not t.done()):
                    if not forced.is_set():
                        log.warning("stop_timeout", component=late.get_name())
                    late.cancel()
            elif entry.stop is Stop.DRAIN:
                entry.component.stop()
                await _until_done([task], forced)
                task.cancel()  # done already, unless the exit was forced
            else:
                entry.component.stop()
                task.cancel()

    async def _serve_requests(self, tg: asyncio.TaskGroup, parts: Parts) -> None:
        """Acts on what the signal handlers queued (they only set flags)."""
        while True:
            request = await self.signals.next()
            with contextlib.suppress(Exception):  # no failure to log may keep clawd up
                self._log_request(request)
            if request.kind == "reload" and not self.signals.stopping.is_set():
                task = tg.create_task(self._reload_from(request.signame), name="reload")
                self._reloads.add(task)
                task.add_done_callback(self._reloads.discard)
            elif request.kind == "backup":
                parts.backups.request(request.signame)

    @staticmethod
    def _log_request(request: Request) -> None:
        if request.kind == "stop":
            log.info("stop_requested", signal=request.signame)
        elif request.kind == "force":
            log.warning("stop_forced", signal=request.signame)
