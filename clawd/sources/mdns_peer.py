"""A peer's mDNS announcement read into an Instance: TXT entries checked and cleaned."""

from __future__ import annotations

import ipaddress
import re

from zeroconf import IPVersion, ServiceInfo

from clawd.core.model import Instance
from clawd.core.text import clean_text

MAX_TEXT_CHARS = 200  # InstanceSettings' limit for gateway_id and name
MAX_VERSION_CHARS = 64
MAX_LEAD_NUMBER = 2**31 - 1  # fleet_instances.lead_number is an INTEGER

_LEAD_NUMBER = re.compile(r"[0-9]{1,10}")
_SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?")


def _txt_fields(properties: dict[bytes, bytes | None]) -> tuple[dict[str, str], list[str]]:
    """TXT key/values as text, keys lower-cased (RFC 6763 keys are case-insensitive)."""
    fields: dict[str, str] = {}
    problems: list[str] = []
    for raw_key, raw_value in properties.items():
        key = raw_key.decode("ascii", "replace").lower()
        if raw_value is None or key in fields:
            continue
        try:
            fields[key] = raw_value.decode()
        except UnicodeDecodeError:
            problems.append(f"{clean_text(key)} is not UTF-8")
    return fields, problems


def _gateway_id_problem(value: str | None) -> str | None:
    if not value:
        return "gateway_id missing"
    if len(value) > MAX_TEXT_CHARS:
        return f"gateway_id longer than {MAX_TEXT_CHARS} characters"
    if clean_text(value) != value or value != value.strip():
        return "gateway_id has control characters or surrounding spaces"
    if "/" in value or "\\" in value or value in {".", ".."}:
        return "gateway_id is not a plain file name"
    return None


def _peer_address(info: ServiceInfo) -> str | None:
    for version in (IPVersion.V4Only, IPVersion.V6Only):
        for text in info.parsed_scoped_addresses(version):
            address = ipaddress.ip_address(text)
            if not (address.is_unspecified or address.is_multicast):
                return text
    return None


def parse_peer(info: ServiceInfo) -> tuple[Instance | None, tuple[str, ...]]:
    """A peer from a resolved service: the Instance (None if unusable) and what was wrong."""
    fields, problems = _txt_fields(info.properties)
    gateway_id = fields.get("gateway_id")
    if (problem := _gateway_id_problem(gateway_id)) is not None:
        return None, (*problems, problem)
    assert gateway_id is not None
    ip = _peer_address(info)
    if ip is None:
        return None, (*problems, "no usable address")

    name = clean_text(fields.get("name", "")).strip()[:MAX_TEXT_CHARS]
    if name != fields.get("name"):
        problems.append("name missing, unsafe or too long")
    name = name or gateway_id

    lead_number: int | None = None
    raw_lead = fields.get("lead_number")
    if (
        raw_lead is not None
        and _LEAD_NUMBER.fullmatch(raw_lead)
        and int(raw_lead) <= MAX_LEAD_NUMBER
    ):
        lead_number = int(raw_lead)
    else:
        problems.append("lead_number missing or not an integer in 0..2**31-1")

    ssh_user = fields.get("ssh_user")
    if ssh_user is None or not _SSH_USER.fullmatch(ssh_user):
        problems.append("ssh_user missing or not a valid user name")
        ssh_user = None

    ssh_port = info.port or 0
    if not 1 <= ssh_port <= 65535:
        txt_port = fields.get("ssh_port", "")
        ssh_port = int(txt_port) if txt_port.isascii() and txt_port.isdigit() else 0
        if not 1 <= ssh_port <= 65535:
            problems.append("no valid SSH port; assuming 22")
            ssh_port = 22

    version = fields.get("version")
    if version is not None:
        cleaned = clean_text(version).strip()[:MAX_VERSION_CHARS]
        if cleaned != version:
            problems.append("version unsafe or too long")
        version = cleaned or None

    instance = Instance(
        gateway_id=gateway_id,
        name=name,
        lead_number=lead_number,
        ip=ip,
        ssh_user=ssh_user,
        ssh_port=ssh_port,
        version=version,
    )
    return instance, tuple(problems)


def peer_summary(instance: Instance) -> tuple[object, ...]:
    """What a change must touch to be logged as the peer having changed."""
    return (
        instance.gateway_id,
        instance.name,
        instance.lead_number,
        instance.ip,
        instance.ssh_user,
        instance.ssh_port,
        instance.version,
    )
