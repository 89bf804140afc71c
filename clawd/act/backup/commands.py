"""What `clawd backup …` calls: direct operations (no daemon needed) and text for the terminal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from clawd.act.backup import catalog, names
from clawd.act.backup.errors import BackupError
from clawd.act.backup.restore import run_restore
from clawd.act.backup.results import (
    BackupInfo,
    BackupResult,
    RestoreResult,
    VerifyResult,
    human_size,
)
from clawd.act.backup.reverify import run_verify
from clawd.act.backup.runner import run_backup
from clawd.config.settings import Settings
from clawd.serve.daemon_client import daemon_running

LIST_COLUMNS = ("FILE", "TIME", "SIZE", "DURATION", "VERIFIED", "KIND")


def backup_now(settings: Settings, source: str = "clawd backup now") -> BackupResult:
    """One backup in this process (when no daemon runs); waits for the backup lock."""
    return asyncio.run(run_backup(settings, source))


def list_backups(settings: Settings) -> list[BackupInfo]:
    return catalog.list_backups(names.backup_dir(settings.home))


def verify(settings: Settings, file: str | None) -> VerifyResult:
    """Verify FILE's backup run, or the newest complete one; the result is recorded."""
    return asyncio.run(run_verify(settings, file))


def ask(plan: str) -> bool:
    """Show the plan on the terminal; True only for an explicit yes."""
    print(plan, flush=True)
    try:
        answer = input("Type 'yes' to restore: ")
    except EOFError:
        return False
    return answer.strip().lower() == "yes"


def restore(
    settings: Settings,
    file: str,
    yes: bool,
    interactive: bool,
    *,
    confirm: Callable[[str], bool] = ask,
) -> RestoreResult:
    """Restore FILE. Without `yes`, asks `confirm(plan)`, and refuses outright when
    there is no terminal to ask on; refuses while the daemon runs on this home."""
    if not yes and not interactive:
        raise BackupError(
            "refusing to restore without a terminal to confirm on; pass --yes to restore "
            "non-interactively"
        )
    if daemon_running(settings.home):
        raise BackupError(
            f"clawd is running on {settings.home} and would overwrite what is restored; "
            "stop it first (systemctl stop clawd), restore, then start it again"
        )
    return asyncio.run(run_restore(settings, file, None if yes else confirm))


# -- text -------------------------------------------------------------------


def _safe(text: str) -> str:
    # File names come from a directory anyone with access could fill: no terminal escapes.
    return text.encode("unicode_escape").decode("ascii")


def format_list(rows: list[BackupInfo]) -> str:
    if not rows:
        return "no backups yet"
    cells = [
        (
            _safe(r.file),
            r.time,
            human_size(r.size) if r.size is not None else "-",
            f"{r.duration_s:.1f} s" if r.duration_s is not None else "-",
            r.verified,
            r.kind,
            _safe(r.error) if r.error else "",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(LIST_COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(LIST_COLUMNS, widths, strict=True)).rstrip()]
    for c in cells:
        line = "  ".join(v.ljust(w) for v, w in zip(c[:-1], widths, strict=True)).rstrip()
        lines.append(f"{line}  ({c[-1]})" if c[-1] else line)
    return "\n".join(lines)


def format_backup(result: BackupResult) -> str:
    lines = [result.summary()]
    v = result.verification
    if v is not None:
        lines.append(f"  checksum {v.checksum}; full read {v.readable}; restore {v.restore}")
    if result.directory:
        lines.append(f"  in {result.directory}")
    return "\n".join(lines)


def format_verify(result: VerifyResult) -> str:
    v = result.verification
    head = "verified" if v.ok else "VERIFICATION FAILED"
    lines = [
        f"{head}: {', '.join(_safe(f) for f in result.files)}",
        f"  checksum:  {v.checksum}",
        f"  full read: {v.readable}",
        f"  restore:   {v.restore}",
    ]
    if v.restored_counts:
        counts = ", ".join(f"{t} {n}" for t, n in v.restored_counts.items())
        lines.append(f"  restored rows: {counts}")
    lines.append(
        f"  took {v.duration_s:.1f} s" + ("; recorded in the manifest" if result.recorded else "")
    )
    return "\n".join(lines)


def format_restore(result: RestoreResult) -> str:
    lines = [f"restored {_safe(result.file)} into {result.target} in {result.duration_s:.1f} s"]
    if result.counts_after is not None:
        lines.append("  rows now: " + ", ".join(f"{t} {n}" for t, n in result.counts_after.items()))
    if result.restored:
        lines.append(f"  restored: {', '.join(result.restored)}")
    if result.moved_aside:
        lines.append(f"  moved aside: {', '.join(result.moved_aside)}")
    lines.extend(f"  note: {n}" for n in result.notes)
    return "\n".join(lines)
