"""The JSON store: `state.json`, `fleet.json`, `peers/<gateway_id>.json`, history logs.

Layout and keys follow the seed, so its jq snippets keep working:
`jq -r '.status' peers/gw-b.json`, `jq -r '.sshUser' state.json`.
Every write is atomic and runs off the event loop, one thread hop per write.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from clawd.core.atomic import append_durable, remove_stale_temp_files, write_atomic
from clawd.core.errors import StoreError
from clawd.core.model import FleetSnapshot, Incident, Instance, PeerState, SkillAudit, utcnow
from clawd.keep.store import codec

log = structlog.get_logger("clawd.keep.store.json")

INCIDENTS_FILE = "incidents.jsonl"
SKILL_AUDIT_FILE = "skill_audit.jsonl"


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def peer_file_name(gateway_id: str) -> str:
    return f"{gateway_id}.json"


@dataclass(slots=True)
class LoadResult:
    snapshot: FleetSnapshot
    quarantined: list[Path] = field(default_factory=list)


def _quarantine(path: Path, reason: str) -> Path:
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    path.replace(target)
    log.warning("peer_file_quarantined", path=str(path), moved_to=str(target), reason=reason)
    return target


def _load_sync(home: Path, repair: bool) -> LoadResult:
    peers_dir = home / "peers"
    if repair:
        for directory in (home, peers_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            remove_stale_temp_files(directory)
    result = LoadResult(FleetSnapshot())
    fleet = _read_fleet(home / "fleet.json", repair)
    for inst in fleet.get("instances", []):
        result.snapshot.instances[inst.gateway_id] = inst
    result.snapshot.leader = fleet.get("leader")
    for path in sorted(peers_dir.glob("*.json")):
        try:
            raw = json.loads(path.read_bytes())
            inst, state = codec.peer_file_from_json(raw)
            if peer_file_name(inst.gateway_id) != path.name:
                raise ValueError(f"gatewayId {inst.gateway_id!r} does not match the file name")
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            if repair:
                result.quarantined.append(_quarantine(path, str(exc)))
            else:
                log.warning("peer_file_unreadable", path=str(path), reason=str(exc))
            continue
        result.snapshot.instances[inst.gateway_id] = inst
        result.snapshot.peers[inst.gateway_id] = state
    return result


def _read_fleet(path: Path, repair: bool) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_bytes())
        instances = [codec.instance_from_json(o) for o in raw.get("instances", [])]
        leader = raw.get("leader")
        if leader is not None and not isinstance(leader, str):
            raise ValueError("leader: expected a string or null")
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        if repair:
            _quarantine(path, str(exc))
        else:
            log.warning("fleet_file_unreadable", path=str(path), reason=str(exc))
        return {}
    return {"instances": instances, "leader": leader}


def _iter_jsonl(path: Path, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Complete lines from byte `start` on, with the offset after each line.

    A torn last line (crash mid-append) has no newline and is not yielded.
    """
    if not path.exists():
        return
    with path.open("rb") as fh:
        fh.seek(start)
        offset = start
        for line in fh:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            try:
                obj = json.loads(line)
            except ValueError:
                log.warning("history_line_unreadable", path=str(path), offset=offset)
                continue
            if isinstance(obj, dict):
                yield offset, obj


def _without_instance(path: Path, gateway_id: str) -> dict[str, Any] | None:
    """fleet.json's body without `gateway_id`; None when absent (or no readable file)."""
    try:
        body = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("fleet_file_unreadable", path=str(path), reason="not JSON")
        return None
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list):
        return None
    kept = [i for i in instances if not (isinstance(i, dict) and i.get("gatewayId") == gateway_id)]
    if len(kept) == len(instances):
        return None
    body["instances"] = kept
    if body.get("leader") == gateway_id:
        body["leader"] = None  # the daemon elects again at its start
    return dict(body)


class JsonStore:
    """Reads and writes the JSON files under `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.peers_dir = home / "peers"
        self._locks: dict[Path, asyncio.Lock] = {}

    async def load(self, *, read_only: bool = False) -> LoadResult:
        """What is there; unless read_only, first create the layout, remove stale temp
        files and quarantine malformed ones (only the daemon may: a reader running beside
        it would delete the temp file of a write in progress)."""
        try:
            return await asyncio.to_thread(_load_sync, self.home, not read_only)
        except OSError as exc:
            raise StoreError(f"cannot open the JSON store at {self.home}: {exc}") from exc

    async def _locked(self, op: Callable[[Path, bytes], None], path: Path, data: bytes) -> None:
        # One writer per file at a time keeps a newer state from being
        # overtaken by an older one still in flight.
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:
            try:
                await asyncio.to_thread(op, path, data)
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc}") from exc

    async def _write(self, path: Path, data: bytes) -> None:
        await self._locked(write_atomic, path, data)

    async def _append(self, path: Path, data: bytes) -> None:
        await self._locked(append_durable, path, data)

    async def write_peer(self, inst: Instance, state: PeerState) -> None:
        path = self.peers_dir / peer_file_name(inst.gateway_id)
        await self._write(path, _dumps(codec.peer_file_to_json(inst, state)))

    async def remove_peer(self, gateway_id: str) -> bool:
        """Delete peers/<gateway_id>.json (under that file's lock: no write overtakes it);
        False when there was none."""
        path = self.peers_dir / peer_file_name(gateway_id)
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:
            try:
                await asyncio.to_thread(path.unlink)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise StoreError(f"cannot delete {path}: {exc}") from exc
        return True

    async def drop_from_fleet(self, gateway_id: str) -> bool:
        """Take one instance out of fleet.json, the rest untouched (no daemon runs: the CLI
        edits the file); False when it was not there."""
        path = self.home / "fleet.json"
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:
            try:
                body = await asyncio.to_thread(_without_instance, path, gateway_id)
                if body is None:
                    return False
                await asyncio.to_thread(write_atomic, path, _dumps(body))
            except OSError as exc:
                raise StoreError(f"cannot rewrite {path}: {exc}") from exc
        return True

    async def write_fleet(self, instances: list[Instance], leader: str | None) -> None:
        body = {
            "updatedAt": utcnow().isoformat(),
            "leader": leader,
            "instances": [codec.instance_to_json(i) for i in instances],
        }
        await self._write(self.home / "fleet.json", _dumps(body))

    async def write_state(self, inst: Instance, extra: dict[str, Any] | None = None) -> None:
        """This instance's own identity; `sshUser` is what the seed's scripts read."""
        body = codec.instance_to_json(inst) | (extra or {})
        await self._write(self.home / "state.json", _dumps(body))

    async def append_incident(self, incident: Incident) -> None:
        line = json.dumps(codec.incident_to_json(incident), ensure_ascii=False) + "\n"
        await self._append(self.home / INCIDENTS_FILE, line.encode())

    async def append_skill_audit(self, audit: SkillAudit) -> None:
        line = json.dumps(codec.skill_audit_to_json(audit), ensure_ascii=False) + "\n"
        await self._append(self.home / SKILL_AUDIT_FILE, line.encode())

    def read_incidents(
        self, start: int = 0, since: datetime | None = None
    ) -> Iterator[tuple[int, Incident]]:
        """Blocking iterator over incidents.jsonl (for the CLI and the importer)."""
        for offset, obj in _iter_jsonl(self.home / INCIDENTS_FILE, start):
            try:
                inc = codec.incident_from_json(obj)
            except (ValueError, KeyError, TypeError):
                log.warning("incident_line_invalid", offset=offset)
                continue
            if since is None or inc.timestamp >= since:
                yield offset, inc

    def read_skill_audits(self, start: int = 0) -> Iterator[tuple[int, SkillAudit]]:
        for offset, obj in _iter_jsonl(self.home / SKILL_AUDIT_FILE, start):
            try:
                yield offset, codec.skill_audit_from_json(obj)
            except (ValueError, KeyError, TypeError):
                log.warning("skill_audit_line_invalid", offset=offset)
