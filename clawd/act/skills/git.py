"""Running git: no shell, no prompts, a time limit, and credentials kept out of errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

from clawd.act.skills.urls import mask_text
from clawd.core.errors import SkillSyncError

MESSAGE_CHARS = 400

# Variables that would point git at another repository or index than the one we name.
_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_PREFIX")


def git_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for git: never prompt (no terminal, no ssh passphrase), C locale."""
    env = dict(os.environ if environ is None else environ)
    for name in _REPO_VARS:
        env.pop(name, None)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


def _one_line(text: str) -> str:
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


async def run_git(args: list[str], *, limit: float, what: str, url: str | None = None) -> str:
    """Run `git ARGS`; its stdout. SkillSyncError (credentials of `url` masked) when git
    fails, cannot start, or runs past `limit` s (then its process group is killed)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=git_env(),
            # Its own process group, so a kill also stops ssh/upload-pack/remote helpers,
            # which would otherwise keep our pipes open.
            start_new_session=True,
        )
    except OSError as exc:
        raise SkillSyncError(f"cannot run git: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except BaseException as exc:  # timed out, or cancelled (stop)
        if proc.returncode is None:  # not reaped yet: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise SkillSyncError(f"{what} timed out after {limit:g} s and was stopped") from None
        raise
    if proc.returncode != 0:
        message = mask_text(_one_line(err.decode(errors="replace")), url)
        if proc.returncode is not None and proc.returncode < 0:
            reason = f"was killed by {signal.Signals(-proc.returncode).name}"
        else:
            reason = f"failed (exit {proc.returncode})"
        raise SkillSyncError(f"{what} {reason}: {message or 'no message'}")
    return out.decode(errors="replace")
