"""File names under `<home>/backups`: what clawd writes, and so the only files it may touch."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

PREFIX = "claw_clan_"
DUMP_SUFFIX = ".dump"
JSON_SUFFIX = "_json.tar.gz"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
LOCK_NAME = ".clawd-backup.lock"
STAMP_FORMAT = "%Y%m%d_%H%M%S"

_STAMP = r"(\d{8}_\d{6})"
_KINDS = r"(\.dump|_json\.tar\.gz|\.manifest\.json)"
OWN_FILE = re.compile(rf"^{PREFIX}{_STAMP}{_KINDS}$")
PARTIAL_FILE = re.compile(rf"^{PREFIX}{_STAMP}{_KINDS}\.partial$")
SCRATCH_DB = re.compile(r"^claw_clan_verify_[0-9a-f]{12}$")
# Markers (hidden, 0600): a run in progress, and a scratch database that may still exist.
RUN_MARKER = re.compile(rf"^\.{PREFIX}{_STAMP}\.running$")
SCRATCH_MARKER = re.compile(r"^\.(claw_clan_verify_[0-9a-f]{12})\.scratch$")


def backup_dir(home: Path) -> Path:
    return home / "backups"


def stamp_of(moment: datetime) -> str:
    """Local wall time, like the seed's `date +%Y%m%d_%H%M%S`."""
    return moment.astimezone().strftime(STAMP_FORMAT)


def dump_name(stamp: str) -> str:
    return f"{PREFIX}{stamp}{DUMP_SUFFIX}"


def json_name(stamp: str) -> str:
    return f"{PREFIX}{stamp}{JSON_SUFFIX}"


def manifest_name(stamp: str) -> str:
    return f"{PREFIX}{stamp}{MANIFEST_SUFFIX}"


def run_marker(stamp: str) -> str:
    return f".{PREFIX}{stamp}.running"


def scratch_marker(database: str) -> str:
    return f".{database}.scratch"


def partial_name(name: str) -> str:
    return name + PARTIAL_SUFFIX


def parse_own(name: str) -> tuple[str, str] | None:
    """(stamp, suffix) for a file name clawd writes, else None."""
    match = OWN_FILE.match(name)
    return (match.group(1), match.group(2)) if match else None


def kind_of(name: str) -> str:
    """postgres / json / manifest / other, from the name alone."""
    if name.endswith(".dump"):
        return "postgres"
    if name.endswith((".tar.gz", ".tgz")):
        return "json"
    if name.endswith(MANIFEST_SUFFIX):
        return "manifest"
    return "other"
