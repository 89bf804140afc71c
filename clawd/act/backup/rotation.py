"""Rotation, run only after a backup succeeded: drop runs older than retention_days, but
always keep the newest keep_min verified ones, whatever their age.

Only files a clawd manifest names (and the manifest itself) are ever deleted; anything
else in the directory is left alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from clawd.act.backup import names
from clawd.act.backup.manifest import Manifest
from clawd.core.atomic import fsync_dir


def protected(manifests: list[Manifest], keep_min: int) -> set[str]:
    """Stamps of the newest keep_min verified runs.

    If fewer are verified, complete runs that were never verified fill the gap (never
    ones that failed verification): deleting is what cannot be undone.
    """
    newest_first = sorted(manifests, key=lambda m: m.created, reverse=True)
    keep = [m.stamp for m in newest_first if m.status == "ok" and m.verified][:keep_min]
    if len(keep) < keep_min:
        unverified = [m.stamp for m in newest_first if m.status == "ok" and m.verification is None]
        keep += unverified[: keep_min - len(keep)]
    return set(keep)


def plan(
    manifests: list[Manifest], now: datetime, retention_days: int, keep_min: int
) -> list[Manifest]:
    """The runs to delete (failed runs' manifests included, once they are old)."""
    cutoff = now - timedelta(days=retention_days)
    keep = protected(manifests, keep_min)
    return [m for m in manifests if m.created < cutoff and m.stamp not in keep]


def apply(directory: Path, doomed: list[Manifest]) -> list[str]:
    """Delete the files of `doomed` runs, each manifest last (blocking); names deleted."""
    deleted: list[str] = []
    for manifest in doomed:
        for entry in manifest.files:
            own = names.parse_own(entry.name)
            if own is None or own[0] != manifest.stamp or "/" in entry.name:
                continue  # a manifest never makes clawd delete a file it did not name itself
            path = directory / entry.name
            if path.is_file():
                path.unlink()
                deleted.append(entry.name)
        (directory / manifest.name).unlink(missing_ok=True)
        deleted.append(manifest.name)
    if deleted:
        fsync_dir(directory)
    return deleted
