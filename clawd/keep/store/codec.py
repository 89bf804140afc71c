"""Records <-> camelCase JSON objects, as the seed's files and jq snippets expect."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from clawd.core.model import (
    EventType,
    Incident,
    Instance,
    PeerState,
    PeerStatus,
    Ping,
    SkillAction,
    SkillAudit,
)

JsonObject = dict[str, Any]


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_ts(value: Any, key: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected an ISO-8601 timestamp string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{key}: timestamp has no time zone")
    return parsed


def _req_ts(value: Any, key: str) -> datetime:
    parsed = _parse_ts(value, key)
    if parsed is None:
        raise ValueError(f"{key}: missing")
    return parsed


def _str(obj: JsonObject, key: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key}: missing")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    return value


def _req_str(obj: JsonObject, key: str) -> str:
    value = _str(obj, key, required=True)
    assert value is not None
    return value


def _int(
    obj: JsonObject,
    key: str,
    default: int | None = None,
    *,
    minimum: int = 0,
    maximum: int = 2**31 - 1,
) -> int | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer")
    # Out-of-range values would be refused by PostgreSQL later, far from the bad file.
    if not minimum <= value <= maximum:
        raise ValueError(f"{key}: {value} is outside {minimum}..{maximum}")
    return value


def _bool(obj: JsonObject, key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false")
    return value


def instance_to_json(inst: Instance) -> JsonObject:
    return {
        "gatewayId": inst.gateway_id,
        "name": inst.name,
        "leadNumber": inst.lead_number,
        "ip": inst.ip,
        "sshUser": inst.ssh_user,
        "sshPort": inst.ssh_port,
        "version": inst.version,
        "githubRepo": inst.github_repo,
        "registeredAt": _ts(inst.registered_at),
        "updatedAt": _ts(inst.updated_at),
    }


def instance_from_json(obj: JsonObject) -> Instance:
    gateway_id = _req_str(obj, "gatewayId")
    return Instance(
        gateway_id=gateway_id,
        name=_str(obj, "name") or gateway_id,
        lead_number=_int(obj, "leadNumber"),
        ip=_str(obj, "ip"),
        ssh_user=_str(obj, "sshUser"),
        ssh_port=_int(obj, "sshPort", 22, minimum=1, maximum=65535) or 22,
        version=_str(obj, "version"),
        github_repo=_str(obj, "githubRepo"),
        registered_at=_req_ts(obj.get("registeredAt"), "registeredAt"),
        updated_at=_req_ts(obj.get("updatedAt"), "updatedAt"),
    )


def peer_state_to_json(state: PeerState) -> JsonObject:
    return {
        "status": state.status.value,
        "lastSeen": _ts(state.last_seen),
        "lastPingAttempt": _ts(state.last_ping_attempt),
        "missedPings": state.missed_pings,
        "sshConnectivity": state.ssh_connectivity,
        "clawClanInstalled": state.claw_clan_installed,
        "mdnsBroadcasting": state.mdns_broadcasting,
        "statusUpdatedAt": _ts(state.updated_at),
    }


def peer_state_from_json(obj: JsonObject, gateway_id: str) -> PeerState:
    status = obj.get("status", PeerStatus.UNKNOWN.value)
    try:
        parsed_status = PeerStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in PeerStatus)
        raise ValueError(f"status: {status!r} is not one of {allowed}") from None
    return PeerState(
        gateway_id=gateway_id,
        status=parsed_status,
        last_seen=_parse_ts(obj.get("lastSeen"), "lastSeen"),
        last_ping_attempt=_parse_ts(obj.get("lastPingAttempt"), "lastPingAttempt"),
        missed_pings=_int(obj, "missedPings", 0) or 0,
        ssh_connectivity=_bool(obj, "sshConnectivity"),
        claw_clan_installed=_bool(obj, "clawClanInstalled"),
        mdns_broadcasting=_bool(obj, "mdnsBroadcasting"),
        updated_at=_req_ts(obj.get("statusUpdatedAt", obj.get("updatedAt")), "statusUpdatedAt"),
    )


def peer_file_to_json(inst: Instance, state: PeerState) -> JsonObject:
    """A peer file: identity and current status in one object."""
    return instance_to_json(inst) | peer_state_to_json(state)


def peer_file_from_json(obj: Any) -> tuple[Instance, PeerState]:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    inst = instance_from_json(obj)
    return inst, peer_state_from_json(obj, inst.gateway_id)


def incident_to_json(inc: Incident) -> JsonObject:
    return {
        "key": str(inc.key),
        "gatewayId": inc.gateway_id,
        "eventType": inc.event_type.value,
        "details": inc.details,
        "timestamp": _ts(inc.timestamp),
    }


def incident_from_json(obj: JsonObject) -> Incident:
    details = obj.get("details") or {}
    if not isinstance(details, dict):
        raise ValueError("details: expected an object")
    return Incident(
        gateway_id=_req_str(obj, "gatewayId"),
        event_type=EventType(_req_str(obj, "eventType")),
        details=details,
        timestamp=_req_ts(obj.get("timestamp"), "timestamp"),
        key=_key(obj.get("key"), "key"),
    )


def skill_audit_to_json(audit: SkillAudit) -> JsonObject:
    return {
        "key": str(audit.key),
        "gatewayId": audit.gateway_id,
        "skillName": audit.skill_name,
        "action": audit.action.value,
        "source": audit.source,
        "timestamp": _ts(audit.timestamp),
    }


def skill_audit_from_json(obj: JsonObject) -> SkillAudit:
    return SkillAudit(
        gateway_id=_req_str(obj, "gatewayId"),
        skill_name=_req_str(obj, "skillName"),
        action=SkillAction(_req_str(obj, "action")),
        source=_str(obj, "source"),
        timestamp=_req_ts(obj.get("timestamp"), "timestamp"),
        key=_key(obj.get("key"), "key"),
    )


# Pings travel in the spool as compact arrays: they are the bulk of it.
def ping_to_row(p: Ping) -> list[Any]:
    return [
        p.source_gateway,
        p.target_gateway,
        p.success,
        p.timestamp.isoformat(),
        p.response_ms,
        p.key.hex,
    ]


def _key(value: Any, key: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a UUID string")
    return uuid.UUID(value)


def _ping_ts(value: Any) -> datetime:
    # Older spools may hold zone-less timestamps; only the type is checked here.
    if not isinstance(value, str):
        raise ValueError("ping row: timestamp must be an ISO-8601 string")
    return datetime.fromisoformat(value)


def ping_from_row(row: list[Any]) -> Ping:
    if len(row) != 6:
        raise ValueError(f"ping row: expected 6 fields, got {len(row)}")
    source, target, success, ts, response_ms, key = row
    if not isinstance(source, str) or not isinstance(target, str):
        raise ValueError("ping row: gateway ids must be strings")
    if not isinstance(success, bool):
        raise ValueError("ping row: success must be true or false")
    if response_ms is not None and (
        isinstance(response_ms, bool) or not isinstance(response_ms, int)
    ):
        raise ValueError("ping row: response time must be an integer or null")
    return Ping(
        source_gateway=source,
        target_gateway=target,
        success=success,
        timestamp=_ping_ts(ts),
        response_ms=response_ms,
        key=_key(key, "ping row key"),
    )
