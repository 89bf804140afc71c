"""The daemon's backup component: the schedule, requests (SIGUSR1, control socket),
one backup at a time, status for systemd.

A request while a backup runs is logged and coalesced: at most one follow-up backup
is queued, however many requests arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from clawd.act.backup import files, names
from clawd.act.backup import manifest as manifests
from clawd.act.backup.errors import BackupError
from clawd.act.backup.lock import BackupLock, prepare_dir, try_locked
from clawd.act.backup.manifest import Manifest
from clawd.act.backup.results import BackupResult, age
from clawd.act.backup.reverify import run_verify
from clawd.act.backup.runner import run_backup
from clawd.act.backup.verify import drop_leftover_scratch
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import utcnow
from clawd.core.periodic import Periodic
from clawd.core.schedule import Schedule, format_duration, parse_schedule
from clawd.core.supervise import JobSlot

log = structlog.get_logger("clawd.act.backup")

CHECK_SECONDS = 60.0  # the loop looks at the clock (and overdue state) at least this often


def _good(m: Manifest) -> bool:
    return m.status == "ok" and (m.verification is None or m.verification.ok)


class BackupManager:
    name = "backup"

    def __init__(
        self,
        settings: Settings,
        *,
        on_change: Callable[[], None] | None = None,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        self.check_seconds = check_seconds
        self.backups_started = 0
        self._active = False
        self._requested: str | None = None
        self._waiters: list[asyncio.Future[BackupResult]] = []
        self._job = JobSlot("clawd-backup")
        self._running: tuple[str, datetime] | None = None
        self._started_at = utcnow()
        self._last_attempt: datetime | None = None
        self._last_good: datetime | None = None
        self._last_error: str | None = None
        self._last_good_result: BackupResult | None = None
        self._last_verify: datetime | None = None
        self._overdue = False
        # The first look is at once: a backup overdue at start runs now.
        self._ticker = Periodic(self._tick, check_seconds, first_delay=0.0)

    # -- component ----------------------------------------------------------

    async def run(self, ready: asyncio.Event) -> None:
        """Remove stale partials, then back up on schedule and on request until stop()."""
        self._started_at = utcnow()
        await asyncio.to_thread(self._start_up)
        self._active = True
        ready.set()
        try:
            await self._drop_leftovers()
            await self._ticker.run()
        finally:
            self._active = False
            self._fail_waiters(self._waiters)
            self._waiters = []

    def stop(self) -> None:
        """Stop the loop; a running backup is cancelled (pg_dump killed, partial removed)."""
        self._ticker.stop()
        self._job.cancel()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        self.settings = settings
        self._ticker.wake()

    # -- requests -------------------------------------------------------------

    def request(self, source: str) -> None:
        """Start a backup now; during one, queue at most one follow-up."""
        if self._requested is not None:
            log.info("backup_request_coalesced", source=source, queued_by=self._requested)
        elif self._running is not None:
            log.info(
                "backup_request_queued",
                source=source,
                running_since=self._running[1].isoformat(),
                note="a backup is running; one more starts when it ends",
            )
            self._requested = source
        else:
            log.info("backup_requested", source=source)
            self._requested = source
        self._ticker.wake()

    async def backup_now(self, source: str) -> BackupResult:
        """Request a backup and wait for the result of one that starts after this call."""
        if not self._active or self._ticker.stopping:
            raise BackupError("the backup scheduler is not running")
        waiter: asyncio.Future[BackupResult] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.request(source)
        return await waiter

    async def handle_control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Control-socket handler for {"cmd": "backup"}: runs one, answers with its result."""
        try:
            result = await self.backup_now(str(request.get("source") or "clawd backup now"))
        except ClawdError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": result.ok, "error": result.error, "result": result.to_dict()}

    # -- status ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running is not None

    @property
    def last_good(self) -> datetime | None:
        return self._last_good

    @property
    def last_good_result(self) -> BackupResult | None:
        """The newest good backup (after a restart: from its manifest)."""
        return self._last_good_result

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def status_line(self) -> str:
        """For systemd's STATUS=: running / failed / overdue / last backup age."""
        now = utcnow()
        if self._running is not None:
            source, since = self._running
            return f"backup running ({source}, started {age((now - since).total_seconds())})"
        if self._last_error is not None:
            return f"last backup failed: {self._last_error}"
        if self._is_overdue(now):
            if self._last_good is None:
                return f"backup overdue: none since clawd started {age(self._since(now))}"
            return (
                f"backup overdue: last good backup {age((now - self._last_good).total_seconds())}"
            )
        if self._last_good is not None:
            return f"last backup {age((now - self._last_good).total_seconds())}"
        return f"no backup yet ({self._schedule().describe()})"

    # -- internals ------------------------------------------------------------

    async def _tick(self) -> float:
        """Back up or verify if due (then look again at once); else the seconds to wait."""
        now = utcnow()
        self._check_overdue(now)
        # Until the first backup, the schedule counts from the start.
        due = self._schedule().next_due(self._last_attempt or self._started_at, now)
        verify_due = self._verify_due(now)
        if self._requested is not None or now >= due:
            await self._backup(self._requested or "schedule")
            return 0.0
        if verify_due is not None and now >= verify_due:
            await self._scheduled_verify()
            return 0.0
        until = min(due, verify_due) if verify_due else due
        return min(self.check_seconds, max(0.0, (until - now).total_seconds()))

    def _schedule(self) -> Schedule:
        return parse_schedule(self.settings.backup.schedule)

    def _verify_due(self, now: datetime) -> datetime | None:
        spec = self.settings.backup.verify_restore
        if spec in ("each", "off") or self.settings.backend != "postgres":
            return None
        return parse_schedule(spec).next_due(self._last_verify or self._started_at, now)

    def _since(self, now: datetime) -> float:
        return (now - self._started_at).total_seconds()

    def _is_overdue(self, now: datetime) -> bool:
        limit = 2 * self._schedule().interval.total_seconds()
        if self._last_good is None:
            return self._since(now) > limit
        return (now - self._last_good).total_seconds() > limit

    def _check_overdue(self, now: datetime) -> None:
        overdue = self._is_overdue(now)
        if overdue and not self._overdue:
            limit = format_duration(2 * self._schedule().interval.total_seconds())
            log.warning(
                "backup_overdue",
                last_good=self._last_good.isoformat() if self._last_good else None,
                limit=limit,
            )
        if overdue != self._overdue:
            self._overdue = overdue
            self._changed()

    def _start_up(self) -> None:
        """Blocking: directory, stale partials (if no other process holds the lock), history."""
        directory = names.backup_dir(self.settings.home)
        removed: list[tuple[str, str]] = []
        try:
            prepare_dir(directory)
            if not try_locked(directory, lambda: removed.extend(files.remove_stale(directory))):
                log.info("backup_dir_busy", note="another process holds the backup lock")
            found, _broken = manifests.read_all(directory)
        except OSError as exc:
            # Monitoring goes on; every backup will fail with this until it is fixed.
            self._last_error = f"cannot use {directory}: {exc.strerror or exc}"
            log.error("backup_dir_unusable", reason=self._last_error)
            return
        files.log_removed(removed, directory)
        if found:
            newest = found[-1]
            self._last_attempt = newest.created
            if not _good(newest):
                self._last_error = (
                    newest.error
                    or (newest.verification.error if newest.verification else None)
                    or "unknown"
                )
        good = [m for m in found if _good(m)]
        if good:
            newest_good = good[-1]
            self._last_good = newest_good.created
            self._last_good_result = BackupResult(
                ok=True,
                source=newest_good.source,
                stamp=newest_good.stamp,
                files=newest_good.files,
                duration_s=newest_good.duration_s,
            )

    async def _drop_leftovers(self) -> None:
        """Scratch databases a killed clawd left: dropped now if the lock is free (after
        ready: PostgreSQL may be slow or away; the next backup tries again)."""
        directory = names.backup_dir(self.settings.home)
        try:
            async with BackupLock(directory, 0):
                await drop_leftover_scratch(self.settings, directory)
        except BackupError:
            return  # another process is backing up; it cleans up itself
        except OSError as exc:
            log.error("backup_dir_unusable", reason=f"{directory}: {exc.strerror or exc}")

    async def _backup(self, source: str) -> None:
        waiters, self._waiters = self._waiters, []
        self._requested = None
        self._running = (source, utcnow())
        self.backups_started += 1
        self._changed()
        result: BackupResult | None = None
        try:
            result = await self._job.run(run_backup(self.settings, source))
        finally:
            self._running = None
            if result is None:
                self._fail_waiters(waiters)
            else:
                self._record(result)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(result)
            self._changed()

    def _record(self, result: BackupResult) -> None:
        now = utcnow()
        self._last_attempt = now
        if result.ok:
            self._last_good = now
            self._last_good_result = result
            self._last_error = None
            if result.verification is not None and result.verification.restore == "ok":
                self._last_verify = now
        else:
            self._last_error = result.error

    async def _scheduled_verify(self) -> None:
        self._last_verify = utcnow()
        try:
            await self._job.run(run_verify(self.settings, None, restore=True))
        except ClawdError as exc:
            log.error("backup_verify_failed", reason=str(exc))

    def _fail_waiters(self, waiters: list[asyncio.Future[BackupResult]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(BackupError("clawd is stopping; the backup did not finish"))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
