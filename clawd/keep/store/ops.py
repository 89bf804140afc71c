"""Write operations bound for PostgreSQL, and their spool encoding."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clawd.core.model import Incident, Instance, PeerState, Ping, SkillAudit
from clawd.keep.store import codec


@dataclass(slots=True, frozen=True)
class PingBatch:
    pings: tuple[Ping, ...]


WriteOp = Instance | PeerState | PingBatch | Incident | SkillAudit


def op_rows(op: WriteOp) -> int:
    return len(op.pings) if isinstance(op, PingBatch) else 1


def encode_op(op: WriteOp) -> dict[str, Any]:
    if isinstance(op, PingBatch):
        return {"t": "pings", "rows": [codec.ping_to_row(p) for p in op.pings]}
    if isinstance(op, Instance):
        return {"t": "instance", "v": codec.instance_to_json(op)}
    if isinstance(op, PeerState):
        return {"t": "peer", "id": op.gateway_id, "v": codec.peer_state_to_json(op)}
    if isinstance(op, Incident):
        return {"t": "incident", "v": codec.incident_to_json(op)}
    return {"t": "skill", "v": codec.skill_audit_to_json(op)}


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a JSON array, got {type(value).__name__}")
    return value


def decode_op(obj: Any) -> WriteOp:
    """The op a spool line holds; ValueError (naming what is wrong) for anything else.

    Any JSON value may turn up here (a hand-edited or damaged spool), so every shape
    is checked before use: a bad line is set aside, it must never stop the daemon.
    """
    record = _object(obj, "record")
    kind = record.get("t")
    if kind == "pings":
        rows = _list(record.get("rows"), "rows")
        return PingBatch(tuple(codec.ping_from_row(_list(r, "ping row")) for r in rows))
    if kind == "peer":
        gateway_id = record.get("id")
        if not isinstance(gateway_id, str):
            raise ValueError("id: expected a string")
        return codec.peer_state_from_json(_object(record.get("v"), "v"), gateway_id)
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ValueError(f"unknown spool record type {kind!r}")
    return decoder(_object(record.get("v"), "v"))


_DECODERS: dict[str, Callable[[dict[str, Any]], WriteOp]] = {
    "instance": codec.instance_from_json,
    "incident": codec.incident_from_json,
    "skill": codec.skill_audit_from_json,
}


def encode_lines(ops: list[WriteOp]) -> bytes:
    """One JSON line per op; run in a worker thread for big batches."""
    return "".join(
        json.dumps(encode_op(op), separators=(",", ":"), ensure_ascii=False) + "\n" for op in ops
    ).encode()
