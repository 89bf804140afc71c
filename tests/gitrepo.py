"""A local bare git repository acting as the shared skills remote, for tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# The machine's and the user's git config must not change what the tests see.
ISOLATED_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}
IDENTITY = ["-c", "user.name=clawd tests", "-c", "user.email=tests@clawd.invalid"]


def isolate_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point git (ours and clawd's) away from the machine's config."""
    for key, value in ISOLATED_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(key, raising=False)


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd` (blocking); its stdout."""
    done = subprocess.run(
        ["git", *IDENTITY, *args],
        cwd=cwd,
        env=dict(os.environ, **ISOLATED_ENV),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class GitRemote:
    """`<root>/remote.git` (bare, default branch main) and `<root>/work` pushing to it."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.branch = branch
        self.bare.mkdir(parents=True)
        self.work.mkdir(parents=True)
        git(self.bare, "init", "--quiet", "--bare", f"--initial-branch={branch}")
        git(self.work, "init", "--quiet", f"--initial-branch={branch}")
        git(self.work, "remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def write(self, relpath: str, content: str = "", *, executable: bool = False) -> None:
        path = self.work / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o755 if executable else 0o644)

    def remove(self, relpath: str) -> None:
        git(self.work, "rm", "-r", "--quiet", relpath)

    def commit(self, message: str = "change", *, branch: str | None = None) -> str:
        """Commit everything in the work tree and push it; the new commit's hash."""
        git(self.work, "add", "--all")
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message)
        git(self.work, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch or self.branch}")
        return git(self.work, "rev-parse", "HEAD").strip()

    def tag(self, name: str) -> None:
        git(self.work, "tag", name)
        git(self.work, "push", "--quiet", "origin", f"refs/tags/{name}")
