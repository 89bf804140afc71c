"""This instance's own mDNS record: its DNS-SD name and the TXT entries announcing it."""

from __future__ import annotations

import hashlib
import ipaddress

import structlog
from zeroconf import BadTypeInNameException, ServiceInfo
from zeroconf.asyncio import AsyncServiceInfo

from clawd.core.errors import ClawdError
from clawd.core.model import Instance
from clawd.core.text import clean_text, truncate_utf8

log = structlog.get_logger("clawd.sources.discovery")  # its warnings are part of announcing

MAX_TXT_ENTRY_BYTES = 255  # one length byte per TXT string
MAX_LABEL_BYTES = 63  # one DNS label


def instance_label(gateway_id: str, number: int = 1) -> str:
    """The DNS-SD instance label for a gateway: the id itself when it fits in one label.

    `number` 2, 3 … renames it (`gw-main-2`) when another machine announces the label.
    """
    suffix = "" if number == 1 else f"-{number}"
    label = clean_text(gateway_id)
    if label == gateway_id and len(label.encode()) + len(suffix) <= MAX_LABEL_BYTES:
        return label + suffix
    digest = hashlib.sha256(gateway_id.encode()).hexdigest()[:8]
    return f"{truncate_utf8(label, MAX_LABEL_BYTES - 9 - len(suffix))}-{digest}{suffix}"


def own_service_info(
    me: Instance, service_type: str, revision: int = 0, number: int = 1
) -> AsyncServiceInfo:
    """The service record announcing `me`; ClawdError if `me` cannot be announced.

    `number` picks the instance label (see `instance_label`); the TXT keeps the real
    gateway id, which is what peers key an instance by, so a renamed record is no new peer.

    `revision` goes out as TXT `rev`: it changes with every change of the record, so that
    going back to earlier values (lead_number 1 -> 9 -> 1 within seconds) is still a new
    TXT record. Browsers (python-zeroconf) report an update only for a record that is not
    in their cache yet, and the earlier one stays there until its expiry is purged (every
    10 s), so without it the second change was never seen by the other peers.
    """
    try:
        address = ipaddress.ip_address(me.ip or "")
    except ValueError:
        raise ClawdError(
            f"instance.ip {me.ip!r} is not an IP address; mDNS needs one to announce this instance"
        ) from None
    txt: dict[str, str] = {"gateway_id": me.gateway_id, "name": me.name}
    optional = {"lead_number": me.lead_number, "version": me.version, "ssh_user": me.ssh_user}
    txt |= {key: str(value) for key, value in optional.items() if value is not None}
    txt["ssh_port"] = str(me.ssh_port)
    txt["rev"] = str(revision)
    for key, value in txt.items():
        room = MAX_TXT_ENTRY_BYTES - len(key) - 1
        if len(value.encode()) <= room:
            continue
        if key in {"name", "version"}:
            txt[key] = truncate_utf8(value, room)
            log.warning("mdns_txt_truncated", key=key, max_bytes=room)
        else:
            raise ClawdError(f"{key} is too long to announce over mDNS (max {room} bytes UTF-8)")
    # The host name (SRV target) follows the instance name: a conflicting announcer with the
    # same host name would otherwise add its address to ours in every resolver's answer.
    name = f"{instance_label(me.gateway_id, number)}.{service_type}"
    try:
        return AsyncServiceInfo(
            service_type,
            name,
            port=me.ssh_port,
            properties=txt,
            server=name,
            addresses=[address.packed],
        )
    except BadTypeInNameException as exc:
        raise ClawdError(f"discovery.serviceType {service_type!r} is not valid: {exc}") from None


def record_key(info: ServiceInfo) -> tuple[object, ...]:
    """What a change must touch for the record to need announcing again."""
    return (info.key, info.text, info.port, info.addresses)
