"""Staging a new skills tree next to `<home>/skills` and swapping it in by rename.

All functions are blocking (call them through `asyncio.to_thread`) and must run
under the skills lock.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tarfile
from pathlib import Path

import structlog

from clawd.act.skills.tree import is_skill_name
from clawd.core.atomic import fsync_dir
from clawd.core.errors import SkillSyncError

log = structlog.get_logger("clawd.act.skills")

STAGING_PREFIX = ".skills-staging-"
OLD_PREFIX = ".skills-old-"


def new_staging(skills_dir: Path) -> Path:
    """A fresh, empty staging directory on the same filesystem as `skills_dir`."""
    skills_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = skills_dir.parent / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
    staging.mkdir(mode=0o755)
    return staging


def _in_a_skill(member: tarfile.TarInfo) -> bool:
    parts = Path(member.name).parts
    return len(parts) >= 1 and is_skill_name(parts[0]) and (len(parts) > 1 or member.isdir())


def extract(archive: Path, staging: Path) -> None:
    """Unpack the skills (top-level, non-hidden directories) of a `git archive` tar."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = [m for m in tar.getmembers() if _in_a_skill(m)]
            # "data" refuses absolute paths and links leading outside `staging`.
            tar.extractall(staging, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise SkillSyncError(
            f"the repository has a file that is not safe to install: {exc}"
        ) from None
    except tarfile.TarError as exc:
        raise SkillSyncError(f"cannot unpack the repository's tree: {exc}") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def swap(skills_dir: Path, staging: Path) -> Path | None:
    """Make `staging` the skills directory; the previous one (to delete) or None.

    Two renames: if the second fails, the first is undone. A crash between them
    leaves only `.skills-old-*`, which `recover()` puts back.
    """
    parent = skills_dir.parent
    old = parent / f"{OLD_PREFIX}{secrets.token_hex(6)}"
    had = skills_dir.exists() or skills_dir.is_symlink()
    if had:
        skills_dir.rename(old)
    try:
        staging.rename(skills_dir)
    except BaseException:
        if had:
            old.rename(skills_dir)
        raise
    fsync_dir(parent)
    return old if had else None


def discard(path: Path | None) -> None:
    """Remove a staging/old tree or archive; a failure only leaves it for `recover()`."""
    if path is None:
        return
    try:
        _remove(path)
    except OSError as exc:
        log.warning("skills_cleanup_failed", path=str(path), reason=exc.strerror or str(exc))


def recover(skills_dir: Path) -> list[str]:
    """Put back a skills tree a crash left aside, remove stale staging; what was removed."""
    parent = skills_dir.parent
    try:
        entries = sorted(parent.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return []
    olds = [p for p in entries if p.name.startswith(OLD_PREFIX)]
    if olds and not (skills_dir.exists() or skills_dir.is_symlink()):
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        newest.rename(skills_dir)
        olds.remove(newest)
        log.warning("skills_restored_after_crash", restored=newest.name)
    removed: list[str] = []
    for path in entries:
        if path.name.startswith(STAGING_PREFIX) or path in olds:
            with contextlib.suppress(FileNotFoundError):
                _remove(path)
            removed.append(path.name)
    return removed
