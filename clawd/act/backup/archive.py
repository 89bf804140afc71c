"""The JSON store as `claw_clan_<stamp>_json.tar.gz`, and putting one back.

Archived: config.json, state.json, fleet.json, peers/*.json, incidents.jsonl,
skill_audit.jsonl. Not the spool, not the backups. A restore moves every file it
replaces aside to `<name>.pre-restore-<time>`; it deletes nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from clawd.act.backup.errors import BackupError
from clawd.act.backup.names import STAMP_FORMAT
from clawd.core.atomic import fsync_dir

FILES = ("config.json", "state.json", "fleet.json", "incidents.jsonl", "skill_audit.jsonl")
PEERS = "peers"
CHUNK = 1 << 20


def _peer_files(peers: Path) -> list[Path]:
    # Only peer files, not a writer's `.x.tmp` or a quarantined `*.corrupt-*`.
    return sorted(p for p in peers.glob("*.json") if not p.name.startswith(".") and p.is_file())


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> bool:
    """Add one file as it is at open time; False if it vanished.

    The daemon replaces JSON files atomically and only appends to the .jsonl logs, so
    what one open descriptor reads, up to the size fstat gave, is always a whole
    version (a log's complete prefix) -- never a mix of two writes.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return False
    with f:
        st = os.fstat(f.fileno())
        info = tarfile.TarInfo(arcname)
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o600
        tar.addfile(info, f)
    return True


def write_archive(home: Path, fd: int) -> list[str]:
    """Write the archive into `fd` (left open for the caller's fsync); member names (blocking)."""
    members: list[str] = []
    with os.fdopen(os.dup(fd), "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name in FILES:
            if (home / name).is_file() and _add_file(tar, home / name, name):
                members.append(name)
        peers = home / PEERS
        if peers.is_dir():
            info = tarfile.TarInfo(PEERS)
            info.type, info.mode = tarfile.DIRTYPE, 0o700
            info.mtime = int(peers.stat().st_mtime)
            tar.addfile(info)
            members.append(PEERS)
            for path in _peer_files(peers):
                arcname = f"{PEERS}/{path.name}"
                if _add_file(tar, path, arcname):
                    members.append(arcname)
    return members


def _allowed(member: tarfile.TarInfo) -> bool:
    path = PurePosixPath(member.name)
    if member.name == PEERS:
        return member.isdir()
    if not member.isfile():
        return False
    if len(path.parts) == 1:
        return member.name in FILES
    return (
        len(path.parts) == 2
        and path.parts[0] == PEERS
        and path.suffix == ".json"
        and not path.name.startswith(".")
    )


def read_check(path: Path) -> list[str]:
    """Read every member to the end (gzip CRC included), parse the .json ones (blocking).

    Raises BackupError naming what is wrong.
    """
    members: list[str] = []
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                if not _allowed(member):
                    raise BackupError(f"{path.name}: unexpected member {member.name!r}")
                members.append(member.name)
                if not member.isfile():
                    continue
                stream = tar.extractfile(member)
                assert stream is not None
                data = stream.read()
                if member.name.endswith(".json"):
                    json.loads(data)
    except BackupError:
        raise
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        raise BackupError(f"{path.name} is damaged: {type(exc).__name__}: {exc}") from None
    return members


@dataclass(frozen=True, slots=True)
class JsonRestore:
    restored: list[str]
    moved_aside: list[str]


def plan(home: Path, members: list[str]) -> list[str]:
    """Top-level names a restore will replace or move aside."""
    top = {m.split("/", 1)[0] for m in members}
    out: list[str] = []
    for name in (*FILES, PEERS):
        # config.json stays unless the archive brings one; everything else is state that
        # must not outlive the restore, so it is moved aside even if the archive lacks it.
        if name in top or (name != "config.json" and (home / name).exists()):
            out.append(name)
    return out


def _aside(path: Path, when: str) -> Path:
    target = path.with_name(f"{path.name}.pre-restore-{when}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.pre-restore-{when}-{n}")
        n += 1
    return target


def restore_archive(home: Path, archive: Path, now: datetime) -> JsonRestore:
    """Put the archive's files in place; current ones go to `*.pre-restore-<time>` (blocking)."""
    members = read_check(archive)
    when = now.astimezone().strftime(STAMP_FORMAT)
    staging = home / f".restore-{when}-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            tar.extractall(staging, members=[m for m in tar if _allowed(m)], filter="data")
        top = {m.split("/", 1)[0] for m in members}
        moved: list[str] = []
        restored: list[str] = []
        for name in plan(home, members):
            current = home / name
            if current.exists() or current.is_symlink():
                target = _aside(current, when)
                current.rename(target)
                moved.append(target.name)
            if name in top:
                (staging / name).rename(current)
                restored.append(name)
        fsync_dir(home)
    finally:
        # Only our own staging directory, now empty unless something failed half-way.
        shutil.rmtree(staging, ignore_errors=True)
    return JsonRestore(restored, moved)
