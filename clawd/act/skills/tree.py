"""What a skill is, its content hash, and the difference between two skill trees.

A skill is a top-level directory of the shared repository whose name does not start
with a dot (`.github/` is not a skill); top-level files (README.md) are not skills.
All functions here are blocking: call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 20


def is_skill_name(name: str) -> bool:
    """True for a name that can be a skill (not hidden, not a path trick)."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\0" not in name


def skill_names(root: Path) -> list[str]:
    """The skills under `root` (sorted); none when `root` does not exist."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    return sorted(
        e.name for e in entries if is_skill_name(e.name) and e.is_dir(follow_symlinks=False)
    )


def _field(h: hashlib._Hash, data: bytes) -> None:
    # Length-prefixed, so no two different trees feed the same byte stream.
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def skill_hash(directory: Path) -> str:
    """sha256 over the sorted (relative path, kind/exec bit, content) of every file.

    Symlinks count by their target, never followed; empty directories do not count
    (git cannot hold them).
    """
    h = hashlib.sha256()
    entries: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        base = Path(dirpath)
        rel = base.relative_to(directory)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            entries.append(((rel / name).as_posix(), str(base / name)))
    for relpath, path in sorted(entries):
        st = os.lstat(path)
        _field(h, relpath.encode("utf-8", "surrogateescape"))
        if stat.S_ISLNK(st.st_mode):
            _field(h, b"link")
            _field(h, os.fsencode(Path(path).readlink()))
            continue
        _field(h, b"exec" if st.st_mode & stat.S_IXUSR else b"file")
        content = hashlib.sha256()
        with Path(path).open("rb") as f:
            while chunk := f.read(CHUNK):
                content.update(chunk)
        _field(h, content.digest())
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """Each skill under `root` and its content hash."""
    return {name: skill_hash(root / name) for name in skill_names(root)}


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying a new tree does to the installed one."""

    installed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.installed or self.updated or self.removed)


def diff(current: dict[str, str], new: dict[str, str]) -> Plan:
    """install: a new name; update: the hash changed; remove: the name is gone."""
    return Plan(
        installed=sorted(set(new) - set(current)),
        updated=sorted(n for n in set(new) & set(current) if new[n] != current[n]),
        removed=sorted(set(current) - set(new)),
    )
