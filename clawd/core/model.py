"""Plain records the daemon reasons about; no I/O here."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class PeerStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    UNRESPONSIVE = "unresponsive"
    UNKNOWN = "unknown"


class EventType(StrEnum):
    OFFLINE = "offline"
    ONLINE = "online"
    RECOVERY = "recovery"
    REINSTALL = "reinstall"
    SKILL_SYNC = "skill_sync"
    LEADER_CHANGE = "leader_change"
    # Added by migration 005 (detection).
    PARTITION = "partition"
    PARTITION_END = "partition_end"
    UNREACHABLE = "unreachable"
    FLAP_START = "flap_start"
    FLAP_STOP = "flap_stop"


class SkillAction(StrEnum):
    INSTALL = "install"
    UPDATE = "update"
    REMOVE = "remove"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_key() -> uuid.UUID:
    """A time-ordered (UUIDv7 layout) idempotency key.

    Time-ordered keys keep the unique index on append-only tables right-leaning,
    so inserts touch the last B-tree page instead of random ones.
    """
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= (rand >> 62) << 64  # 12 bits rand_a
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


@dataclass(slots=True)
class Instance:
    """A member of the fleet (a `fleet_instances` row)."""

    gateway_id: str
    name: str
    lead_number: int | None = None
    ip: str | None = None
    ssh_user: str | None = None
    ssh_port: int = 22
    version: str | None = None
    github_repo: str | None = None
    registered_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(slots=True)
class PeerState:
    """What this instance currently believes about a peer (a `peer_status` row)."""

    gateway_id: str
    status: PeerStatus = PeerStatus.UNKNOWN
    last_seen: datetime | None = None
    last_ping_attempt: datetime | None = None
    missed_pings: int = 0
    ssh_connectivity: bool = False
    claw_clan_installed: bool = False
    mdns_broadcasting: bool = False
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(slots=True)
class Ping:
    """One ping attempt (a `ping_history` row)."""

    source_gateway: str
    target_gateway: str
    success: bool
    timestamp: datetime
    response_ms: int | None = None
    key: uuid.UUID = field(default_factory=new_key)


@dataclass(slots=True)
class Incident:
    """A significant fleet event (an `incident_log` row)."""

    gateway_id: str
    event_type: EventType
    details: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=utcnow)
    key: uuid.UUID = field(default_factory=new_key)


@dataclass(slots=True)
class SkillAudit:
    """A skill install, update or removal (a `skill_audit` row)."""

    gateway_id: str
    skill_name: str
    action: SkillAction
    source: str | None = None
    timestamp: datetime = field(default_factory=utcnow)
    key: uuid.UUID = field(default_factory=new_key)


@dataclass(slots=True)
class FleetSnapshot:
    """Everything the stores know about the fleet's current state."""

    instances: dict[str, Instance] = field(default_factory=dict)
    peers: dict[str, PeerState] = field(default_factory=dict)
    leader: str | None = None
