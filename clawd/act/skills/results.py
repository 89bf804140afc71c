"""The outcome of one skills sync, as the CLI and the control socket see it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clawd.core.model import SkillAction


@dataclass(slots=True)
class SyncResult:
    """ok with the commit and what changed, or not ok with a one-line error."""

    ok: bool
    commit: str | None = None
    source: str | None = None
    installed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.installed or self.updated or self.removed)

    def actions(self) -> list[tuple[str, SkillAction]]:
        """Every change as (skill, action), sorted by skill name."""
        rows = [(n, SkillAction.INSTALL) for n in self.installed]
        rows += [(n, SkillAction.UPDATE) for n in self.updated]
        rows += [(n, SkillAction.REMOVE) for n in self.removed]
        return sorted(rows)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyncResult:
        def names(key: str) -> list[str]:
            return [str(n) for n in data.get(key) or []]

        return cls(
            ok=bool(data.get("ok")),
            commit=data.get("commit"),
            source=data.get("source"),
            installed=names("installed"),
            updated=names("updated"),
            removed=names("removed"),
            error=data.get("error"),
            duration_seconds=float(data.get("duration_seconds") or 0.0),
        )
