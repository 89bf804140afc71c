"""One skills sync: fetch, stage, compare, swap, record — under the skills lock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import structlog

from clawd.act.skills import apply
from clawd.act.skills.fetch import cache_dir, export_tar, fetch_commit, skill_dirs
from clawd.act.skills.lock import SkillsLock
from clawd.act.skills.results import SyncResult
from clawd.act.skills.tree import Plan, diff, tree_hashes
from clawd.act.skills.urls import mask_text, mask_url
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError, SkillSyncError
from clawd.core.model import EventType, Incident, SkillAudit
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.repository import Repository

log = structlog.get_logger("clawd.act.skills")

T = TypeVar("T")

LOCK_SLACK_SECONDS = 60.0


def lock_wait_seconds(settings: Settings) -> float:
    """Long enough for another sync to finish (its fetch and archive are each bounded)."""
    return 2 * settings.skills.git_timeout_seconds + LOCK_SLACK_SECONDS


def _compare(skills_dir: Path, staging: Path) -> Plan:
    return diff(tree_hashes(skills_dir), tree_hashes(staging))


async def _off_loop(what: str, coro: Awaitable[T]) -> T:
    """Await file work done in a thread; OSError becomes a SkillSyncError saying what failed."""
    try:
        return await coro
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise SkillSyncError(f"cannot {what}{where}: {exc.strerror or exc}") from None


async def _to_completion(coro: Awaitable[T]) -> T:
    """Run `coro` to its end even if the caller is cancelled meanwhile (then re-raise)."""
    inner = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        # A swapped tree without its audit rows is worse than a stop delayed by a rename.
        await asyncio.wait({inner})
        raise


async def _record(
    settings: Settings, repo: Repository, recorder: IncidentRecorder, result: SyncResult
) -> None:
    me = settings.instance.gateway_id
    source = f"{result.source}@{result.commit}"
    for name, action in result.actions():
        await repo.record_skill_audit(
            SkillAudit(gateway_id=me, skill_name=name, action=action, source=source)
        )
    details = {
        "installed": len(result.installed),
        "updated": len(result.updated),
        "removed": len(result.removed),
        "commit": result.commit,
        "source": result.source,
    }
    await recorder.record(Incident(gateway_id=me, event_type=EventType.SKILL_SYNC, details=details))


async def _swap_and_record(
    settings: Settings,
    repo: Repository,
    recorder: IncidentRecorder,
    staging: Path,
    result: SyncResult,
) -> None:
    old = await _off_loop(
        "install the new skills", asyncio.to_thread(apply.swap, settings.skills_dir, staging)
    )
    await _record(settings, repo, recorder, result)
    await asyncio.to_thread(apply.discard, old)


async def sync_skills(
    settings: Settings, repo: Repository, recorder: IncidentRecorder
) -> SyncResult:
    """Bring `<home>/skills` to the repository's commit; SkillSyncError (nothing changed,
    nothing recorded) when the repository cannot be fetched or the tree not staged."""
    url = settings.instance.github_repo
    if not url:
        raise SkillSyncError("instance.githubRepo is not set: there is no skills repository")
    started = time.monotonic()
    home, skills_dir = settings.home, settings.skills_dir
    limit = settings.skills.git_timeout_seconds
    async with SkillsLock(home, lock_wait_seconds(settings)):
        stale = await _off_loop(
            "clean up after an earlier sync", asyncio.to_thread(apply.recover, skills_dir)
        )
        if stale:
            log.info("skills_stale_staging_removed", entries=",".join(stale))
        commit = await fetch_commit(cache_dir(home), url, settings.skills.ref, limit)
        staging = await _off_loop(
            "create a staging directory", asyncio.to_thread(apply.new_staging, skills_dir)
        )
        archive = staging.parent / f"{staging.name}.tar"
        try:
            names = await skill_dirs(cache_dir(home), commit, limit)
            if names:  # an empty staging directory is right when every skill was removed
                await export_tar(cache_dir(home), commit, names, archive, limit)
                await _off_loop(
                    "unpack the skills", asyncio.to_thread(apply.extract, archive, staging)
                )
                await asyncio.to_thread(apply.discard, archive)
            plan = await _off_loop(
                "compare the skills", asyncio.to_thread(_compare, skills_dir, staging)
            )
            result = SyncResult(
                ok=True,
                commit=commit,
                source=mask_url(url),
                installed=plan.installed,
                updated=plan.updated,
                removed=plan.removed,
            )
            if plan.changed:
                await _to_completion(_swap_and_record(settings, repo, recorder, staging, result))
        finally:
            await asyncio.to_thread(apply.discard, archive)
            await asyncio.to_thread(apply.discard, staging)
    result.duration_seconds = round(time.monotonic() - started, 3)
    return result


async def attempt(settings: Settings, repo: Repository, recorder: IncidentRecorder) -> SyncResult:
    """sync_skills, with a failure returned as a result (ok False, credentials masked)."""
    url = settings.instance.github_repo
    try:
        return await sync_skills(settings, repo, recorder)
    except ClawdError as exc:
        return SyncResult(
            ok=False, source=mask_url(url) if url else None, error=mask_text(str(exc), url)
        )
