"""The sidecar manifest of one backup run: `claw_clan_<stamp>.manifest.json` (0600).

It names the files of the run with size and sha256, the duration, the pg_dump and
server versions, the row counts of the five tables in the dump's snapshot, and the
verification result. A failed run leaves a manifest too, so `clawd backup list`
shows the failure. Rotation deletes only files a manifest names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from clawd.act.backup import names
from clawd.core.atomic import write_atomic

FORMAT = 1
CREATOR = "clawd"

Kind = Literal["postgres", "json"]


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    kind: Kind
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Verification:
    """What was checked and how it went; `ok` is what rotation's keep_min counts."""

    ok: bool
    at: str
    checksum: str = "not run"  # ok / failed: … / no manifest
    readable: str = "not run"  # ok / failed: …
    restore: str = "not run"  # ok / skipped: … / failed: … / not run
    restored_counts: dict[str, int] | None = None
    duration_s: float = 0.0
    error: str | None = None

    @property
    def level(self) -> str:
        """yes / read-only / FAILED, for `clawd backup list`."""
        if not self.ok:
            return "FAILED"
        return "yes" if self.restore in ("ok", "n/a") else "read-only"


@dataclass(frozen=True, slots=True)
class Manifest:
    stamp: str
    created_at: str  # ISO 8601, UTC
    status: Literal["ok", "failed"]
    source: str
    backend: str
    duration_s: float
    files: tuple[FileEntry, ...] = ()
    error: str | None = None
    database: str | None = None  # host:port/database, never a password
    pg_dump_version: str | None = None
    server_version: str | None = None
    compression: str | None = None
    row_counts: dict[str, int] | None = None
    json_members: tuple[str, ...] = ()
    verification: Verification | None = None
    format: int = FORMAT
    creator: str = CREATOR

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    @property
    def name(self) -> str:
        return names.manifest_name(self.stamp)

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.ok

    def file(self, kind: Kind) -> FileEntry | None:
        return next((f for f in self.files if f.kind == kind), None)

    def with_verification(self, verification: Verification) -> Manifest:
        return replace(self, verification=verification)


# Values that are data (table names as keys), not fields to rename.
_DATA_FIELDS = frozenset({"row_counts", "restored_counts"})


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def _out(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_camel(k): v if k in _DATA_FIELDS else _out(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_out(v) for v in obj]
    return obj


def _in(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_snake(k): v if _snake(k) in _DATA_FIELDS else _in(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_in(v) for v in obj]
    return obj


def _known(cls: type, body: dict[str, Any]) -> dict[str, Any]:
    # A newer clawd may add keys: read what this one knows.
    wanted = {f.name for f in fields(cls)}
    return {k: v for k, v in body.items() if k in wanted}


def to_json(manifest: Manifest) -> bytes:
    return (json.dumps(_out(asdict(manifest)), indent=2) + "\n").encode()


def from_json(data: bytes | str) -> Manifest:
    """Parse a manifest; ValueError when it is not one clawd wrote."""
    raw = json.loads(data)
    if not isinstance(raw, dict) or raw.get("creator") != CREATOR:
        raise ValueError("not a clawd backup manifest")
    body = _known(Manifest, _in(raw))
    try:
        files = tuple(FileEntry(**_known(FileEntry, f)) for f in body.pop("files", []))
        ver = body.pop("verification", None)
        verification = Verification(**_known(Verification, ver)) if ver is not None else None
        members = tuple(body.pop("json_members", ()))
        return Manifest(files=files, verification=verification, json_members=members, **body)
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"malformed manifest: {exc}") from None


def write(directory: Path, manifest: Manifest) -> Path:
    """Atomically (tmp + fsync + rename + dir fsync), mode 0600. Blocking."""
    path = directory / manifest.name
    write_atomic(path, to_json(manifest), mode=0o600)
    return path


def read(path: Path) -> Manifest:
    """Blocking; ValueError/OSError when unreadable."""
    return from_json(path.read_bytes())


def read_all(directory: Path) -> tuple[list[Manifest], list[str]]:
    """Every readable manifest, oldest first, and the names of unreadable ones. Blocking."""
    found: list[Manifest] = []
    broken: list[str] = []
    if not directory.is_dir():
        return found, broken
    for entry in sorted(directory.iterdir()):
        parsed = names.parse_own(entry.name)
        if parsed is None or parsed[1] != names.MANIFEST_SUFFIX:
            continue
        try:
            manifest = read(entry)
        except (OSError, ValueError):
            broken.append(entry.name)
            continue
        if manifest.stamp == parsed[0]:
            found.append(manifest)
        else:
            broken.append(entry.name)
    found.sort(key=lambda m: m.created)
    return found, broken
