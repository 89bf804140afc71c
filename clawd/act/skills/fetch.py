"""The cache clone at `<home>/.skills-repo`: fetch a commit, export its tree.

The cache is a bare repository fetched *by URL* (`git init --bare` once, then
`git fetch URL`): unlike `git clone`, nothing writes the URL — and any credentials
in it — into the cache's config.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from clawd.act.skills.git import run_git
from clawd.act.skills.tree import is_skill_name
from clawd.act.skills.urls import mask_url
from clawd.core.errors import SkillSyncError

CACHE_NAME = ".skills-repo"
FETCHED_REF = "refs/clawd/skills"


def cache_dir(home: Path) -> Path:
    return home / CACHE_NAME


def _needs_init(cache: Path) -> bool:
    """Blocking: True when `cache` is not a bare repository (absent, or a broken earlier init)."""
    if (cache / "HEAD").is_file() and (cache / "objects").is_dir() and (cache / "refs").is_dir():
        return False
    if cache.exists() or cache.is_symlink():
        if cache.is_dir() and not cache.is_symlink():
            shutil.rmtree(cache)
        else:
            cache.unlink()
    return True


def _check_arg(value: str, what: str) -> None:
    if not value or value.startswith("-"):
        raise SkillSyncError(f"{what} {value!r} is not usable: it is empty or starts with '-'")


async def fetch_commit(cache: Path, url: str, ref: str | None, limit: float) -> str:
    """Fetch `ref` (None: the remote's default branch) from `url` into `cache`; its commit."""
    _check_arg(url, "instance.githubRepo")
    if ref is not None:
        _check_arg(ref, "skills.ref")
    try:
        fresh = await asyncio.to_thread(_needs_init, cache)
    except OSError as exc:
        raise SkillSyncError(f"cannot use {cache}: {exc.strerror or exc}") from None
    if fresh:
        await run_git(["init", "--bare", "--quiet", str(cache)], limit=limit, what="git init")
    git_dir = f"--git-dir={cache}"
    src = ref if ref is not None else "HEAD"
    await run_git(
        [
            git_dir,
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--end-of-options",
            url,
            f"+{src}:{FETCHED_REF}",
        ],
        limit=limit,
        what=f"git fetch of {mask_url(url)} ({ref or 'default branch'})",
        url=url,
    )
    out = await run_git(
        [
            git_dir,
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            f"{FETCHED_REF}^{{commit}}",
        ],
        limit=limit,
        what="git rev-parse",
    )
    commit = out.strip()
    if len(commit) < 40:
        raise SkillSyncError(f"{mask_url(url)} {src} does not name a commit")
    return commit


async def skill_dirs(cache: Path, commit: str, limit: float) -> list[str]:
    """The skills (top-level, non-hidden directories) in the tree of `commit`."""
    out = await run_git(
        [f"--git-dir={cache}", "ls-tree", "-z", "--end-of-options", commit],
        limit=limit,
        what="git ls-tree",
    )
    names: list[str] = []
    for entry in out.split("\0"):
        meta, _, name = entry.partition("\t")
        if meta.split(" ")[1:2] == ["tree"] and is_skill_name(name):
            names.append(name)
    return sorted(names)


async def export_tar(cache: Path, commit: str, names: list[str], dest: Path, limit: float) -> None:
    """Write the directories `names` (not empty) of `commit`'s tree as a tar file `dest`."""
    await run_git(
        [
            f"--git-dir={cache}",
            "--literal-pathspecs",
            "archive",
            "--format=tar",
            f"--output={dest}",
            commit,
            "--",
            *names,
        ],
        limit=limit,
        what="git archive",
    )
