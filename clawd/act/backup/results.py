"""What backup operations return: to the manager, the CLI, the control socket."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clawd.act.backup.manifest import FileEntry, Verification
from clawd.core.schedule import format_duration


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class BackupResult:
    ok: bool
    source: str
    stamp: str | None = None
    directory: str = ""
    files: tuple[FileEntry, ...] = ()
    duration_s: float = 0.0
    verification: Verification | None = None
    error: str | None = None
    rotated: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> str:
        """One line: files, size, duration, verification; or the failure."""
        if not self.ok:
            return f"backup failed: {self.error}"
        files = ", ".join(f.name for f in self.files)
        text = f"backup {files} ({human_size(self.size)}) in {self.duration_s:.1f} s"
        if self.verification is not None:
            text += f"; verified: {self.verification.level}"
            if self.verification.restore.startswith("skipped"):
                text += f" (verify-restore {self.verification.restore})"
        if self.rotated:
            text += f"; rotated {len(self.rotated)} old file(s)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupResult:
        body = dict(data)
        files = tuple(FileEntry(**f) for f in body.pop("files", ()))
        ver = body.pop("verification", None)
        rotated = tuple(body.pop("rotated", ()))
        return cls(
            files=files,
            verification=Verification(**ver) if ver else None,
            rotated=rotated,
            **body,
        )


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """One row of `clawd backup list`."""

    file: str
    stamp: str
    time: str  # local, "YYYY-MM-DD HH:MM:SS"
    size: int | None
    duration_s: float | None
    verified: str  # yes / read-only / FAILED / no / -
    kind: str  # postgres / json / failed / unknown
    error: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    stamp: str | None
    files: tuple[str, ...]
    verification: Verification
    recorded: bool  # written into the manifest

    @property
    def ok(self) -> bool:
        return self.verification.ok


@dataclass(frozen=True, slots=True)
class RestoreResult:
    file: str
    kind: str
    target: str  # host:port/database or the home directory
    duration_s: float
    counts_before: dict[str, int] | None = None
    counts_after: dict[str, int] | None = None
    counts_expected: dict[str, int] | None = None
    restored: tuple[str, ...] = ()
    moved_aside: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def age(seconds: float) -> str:
    return f"{format_duration(seconds)} ago"
