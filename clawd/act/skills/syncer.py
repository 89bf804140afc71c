"""The daemon's skills component: syncs on `skills.syncInterval` and on request.

Interval schedules sync once at start (a fresh install gets its skills at once);
a time of day ("04:00") waits for its slot. A failure is logged once until the
error changes or a sync succeeds; it records nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog

from clawd.act.skills.results import SyncResult
from clawd.act.skills.sync import attempt
from clawd.config.settings import Settings
from clawd.core.model import utcnow
from clawd.core.periodic import Periodic
from clawd.core.schedule import parse_schedule
from clawd.core.supervise import JobSlot
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.repository import Repository

log = structlog.get_logger("clawd.act.skills")

CHECK_SECONDS = 60.0  # the loop looks at the clock at least this often


class SkillSyncer:
    name = "skills"

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        recorder: IncidentRecorder,
        *,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.recorder = recorder
        self.check_seconds = check_seconds
        self.last_result: SyncResult | None = None
        self._mutex = asyncio.Lock()
        self._job = JobSlot("clawd-skills-sync")
        self._last_attempt: datetime | None = None
        self._last_error: str | None = None
        # The first look is at once: an interval schedule syncs at start.
        self._ticker = Periodic(self._tick, check_seconds, first_delay=0.0)

    # -- component ----------------------------------------------------------

    async def run(self, ready: asyncio.Event) -> None:
        """Ready at once; then sync whenever the schedule is due, until stop()."""
        await self._ticker.run(ready)

    def stop(self) -> None:
        """Stop the loop; a scheduled sync under way is cancelled (git killed, staging removed)."""
        self._ticker.stop()
        self._job.cancel()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """Use new settings from the next sync on; a new repository or ref syncs soon."""
        old = self.settings
        self.settings = settings
        if (old.instance.github_repo, old.skills.ref) != (
            settings.instance.github_repo,
            settings.skills.ref,
        ):
            self._last_attempt = None
        self._ticker.wake()

    async def handle_control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Control-socket handler for {"cmd": "skills-sync"}: one sync, answered with its result."""
        result = await self.sync(str(request.get("source") or "clawd skills sync"))
        return {"ok": result.ok, "error": result.error, "result": result.to_dict()}

    # -- syncing --------------------------------------------------------------

    async def sync(self, source: str) -> SyncResult:
        """One sync now, `source` saying who asked (for the log); never raises a ClawdError:
        a failure is a result with ok False, the previous skills untouched."""
        async with self._mutex:
            result = await attempt(self.settings, self.repo, self.recorder)
            self._note(result, source)
            self.last_result = result
            return result

    def _note(self, result: SyncResult, source: str) -> None:
        if not result.ok:
            if result.error != self._last_error:
                log.error("skills_sync_failed", reason=result.error, requested_by=source)
                self._last_error = result.error
            return
        if self._last_error is not None:
            log.info("skills_sync_recovered", commit=result.commit, requested_by=source)
            self._last_error = None
        if not result.changed:
            log.debug("skills_up_to_date", commit=result.commit, requested_by=source)

    async def _tick(self) -> float:
        """Sync if due (then look again at once); else the seconds to wait."""
        now = utcnow()
        due = self._next_due(now)
        if due is not None and now >= due:
            self._last_attempt = now
            await self._job.run(self.sync("schedule"))
            return 0.0
        if due is None:
            return self.check_seconds
        return min(self.check_seconds, max(0.0, (due - now).total_seconds()))

    def _next_due(self, now: datetime) -> datetime | None:
        spec = self.settings.skills.sync_interval
        if not self.settings.instance.github_repo or spec == "off":
            return None
        schedule = parse_schedule(spec)
        if schedule.every is not None and self._last_attempt is None:
            return now
        return schedule.next_due(self._last_attempt, now)
