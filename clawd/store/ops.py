"""Write operations bound for PostgreSQL, and their spool encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clawd.model import Incident, Instance, PeerState, Ping, SkillAudit
from clawd.store import codec


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


def decode_op(obj: dict[str, Any]) -> WriteOp:
    kind = obj.get("t")
    if kind == "pings":
        return PingBatch(tuple(codec.ping_from_row(r) for r in obj["rows"]))
    if kind == "instance":
        return codec.instance_from_json(obj["v"])
    if kind == "peer":
        return codec.peer_state_from_json(obj["v"], obj["id"])
    if kind == "incident":
        return codec.incident_from_json(obj["v"])
    if kind == "skill":
        return codec.skill_audit_from_json(obj["v"])
    raise ValueError(f"unknown spool record type {kind!r}")


def encode_lines(ops: list[WriteOp]) -> bytes:
    """One JSON line per op; run in a worker thread for big batches."""
    return "".join(
        json.dumps(encode_op(op), separators=(",", ":"), ensure_ascii=False) + "\n" for op in ops
    ).encode()
