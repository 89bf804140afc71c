"""What is in `<home>/backups`: rows for `clawd backup list`, and finding a named backup."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from clawd.act.backup import manifest as manifests
from clawd.act.backup import names
from clawd.act.backup.errors import BackupError
from clawd.act.backup.manifest import Manifest
from clawd.act.backup.results import BackupInfo

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def local_time(moment: datetime) -> str:
    return moment.astimezone().strftime(TIME_FORMAT)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def list_backups(directory: Path) -> list[BackupInfo]:
    """Oldest first: every file of every run (failed runs too), then files without a manifest.

    Blocking.
    """
    found, broken = manifests.read_all(directory)
    rows: list[BackupInfo] = []
    named: set[str] = set()
    for m in found:
        when = local_time(m.created)
        if m.status == "failed":
            rows.append(BackupInfo("-", m.stamp, when, None, m.duration_s, "-", "failed", m.error))
        for entry in m.files:
            named.add(entry.name)
            size = _size(directory / entry.name)
            if size is None:
                verified, note = "MISSING", "file is gone"
            elif m.status == "failed" or m.verification is None:
                verified, note = "no", None
            else:
                verified = m.verification.level
                note = m.verification.error or _restore_note(m)
            rows.append(
                BackupInfo(
                    entry.name, m.stamp, when, size, m.duration_s, verified, entry.kind, note
                )
            )
    for name in broken:
        rows.append(
            BackupInfo(
                name, "", "-", _size(directory / name), None, "-", "unknown", "unreadable manifest"
            )
        )
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            own = names.parse_own(path.name)
            if own is None or own[1] == names.MANIFEST_SUFFIX or path.name in named:
                continue
            when = local_time(datetime.strptime(own[0], names.STAMP_FORMAT))
            rows.append(
                BackupInfo(
                    path.name,
                    own[0],
                    when,
                    _size(path),
                    None,
                    "no manifest",
                    names.kind_of(path.name),
                )
            )
    return rows


def _restore_note(m: Manifest) -> str | None:
    v = m.verification
    if v is not None and v.restore.startswith("skipped"):
        return f"verify-restore {v.restore}"
    return None


def locate(directory: Path, file: str) -> tuple[Path, Manifest | None]:
    """The backup file a user named (a name in the backup directory or a path), with the
    manifest of its run if there is one. Blocking."""
    candidate = directory / file
    path = candidate if "/" not in file and candidate.is_file() else Path(file).expanduser()
    if not path.is_file():
        raise BackupError(f"{file}: no such backup file (see `clawd backup list`)")
    own = names.parse_own(path.name)
    if own is None or own[1] == names.MANIFEST_SUFFIX:
        if own is not None:
            raise BackupError(f"{file} is a manifest; name the .dump or _json.tar.gz file")
        return path, None
    manifest_path = path.parent / names.manifest_name(own[0])
    try:
        manifest = manifests.read(manifest_path)
    except FileNotFoundError:
        return path, None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{manifest_path.name} cannot be read: {exc}") from None
    if all(f.name != path.name for f in manifest.files):
        return path, None
    return path, manifest


def newest_good(directory: Path) -> Manifest | None:
    """The newest complete run (blocking)."""
    found, _ = manifests.read_all(directory)
    good = [m for m in found if m.status == "ok" and m.files]
    return good[-1] if good else None
