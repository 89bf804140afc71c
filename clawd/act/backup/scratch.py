"""The on-disk record of what a backup run has under way: the run itself (until its
manifest is written) and each scratch database (until it is dropped).

A clawd killed mid-backup leaves these markers behind; the next start (or backup)
finds them and removes exactly what that run created, nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

from clawd.act.backup import names
from clawd.core.atomic import fsync_dir


def _mark(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)  # the marker must be on disk before the thing it announces


def mark_run(directory: Path, stamp: str) -> None:
    """Blocking: a run with `stamp` starts writing files."""
    _mark(directory / names.run_marker(stamp))


def unmark_run(directory: Path, stamp: str) -> None:
    """Blocking: the run's manifest is written; its files are accounted for."""
    (directory / names.run_marker(stamp)).unlink(missing_ok=True)


def mark_scratch(directory: Path, database: str) -> None:
    """Blocking: a scratch database with this name is about to be created."""
    _mark(directory / names.scratch_marker(database))


def unmark_scratch(directory: Path, database: str) -> None:
    """Blocking: the scratch database was dropped."""
    (directory / names.scratch_marker(database)).unlink(missing_ok=True)


def marked_scratch(directory: Path) -> list[str]:
    """Blocking: scratch databases a run created and did not drop (oldest first)."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = names.SCRATCH_MARKER.match(entry.name)
        if match:
            found.append((entry.stat().st_mtime, match.group(1)))
    return [name for _, name in sorted(found)]
