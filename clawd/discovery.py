"""mDNS: announce this instance and report peers' announcements as observations."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from clawd.errors import ClawdError
from clawd.model import Instance, utcnow
from clawd.observations import MdnsGone, MdnsSeen, Observation
from clawd.settings import Settings, self_instance
from clawd.settings_sections import DiscoverySettings

log = structlog.get_logger("clawd.discovery")

RESOLVE_TIMEOUT_MS = 3000
MAX_TEXT_CHARS = 200  # InstanceSettings' limit for gateway_id and name
MAX_VERSION_CHARS = 64
MAX_LEAD_NUMBER = 2**31 - 1  # fleet_instances.lead_number is an INTEGER
MAX_TXT_ENTRY_BYTES = 255  # one length byte per TXT string
MAX_LABEL_BYTES = 63  # one DNS label

_LEAD_NUMBER = re.compile(r"[0-9]{1,10}")
_SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}\$?")
# Control, format (bidi overrides), surrogate, private-use, unassigned, line/paragraph breaks.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def clean_text(text: str) -> str:
    """`text` with every character unsafe in a log line or a file replaced by '?'."""
    return "".join("?" if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode(errors="ignore")


def instance_label(gateway_id: str) -> str:
    """The DNS-SD instance label for a gateway: the id itself when it fits in one label."""
    label = clean_text(gateway_id)
    if label == gateway_id and len(label.encode()) <= MAX_LABEL_BYTES:
        return label
    digest = hashlib.sha256(gateway_id.encode()).hexdigest()[:8]
    return f"{_truncate_utf8(label, MAX_LABEL_BYTES - 9)}-{digest}"


def own_service_info(me: Instance, service_type: str) -> AsyncServiceInfo:
    """The service record announcing `me`; ClawdError if `me` cannot be announced."""
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
    for key, value in txt.items():
        room = MAX_TXT_ENTRY_BYTES - len(key) - 1
        if len(value.encode()) <= room:
            continue
        if key in {"name", "version"}:
            txt[key] = _truncate_utf8(value, room)
            log.warning("mdns_txt_truncated", key=key, max_bytes=room)
        else:
            raise ClawdError(f"{key} is too long to announce over mDNS (max {room} bytes UTF-8)")
    name = f"{instance_label(me.gateway_id)}.{service_type}"
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


def _check_local_addresses(addresses: list[str]) -> None:
    """OSError/ValueError unless every address is one of this machine's.

    Zeroconf leaks its already-open sockets when an interface fails, so check first.
    """
    for text in addresses:
        address = ipaddress.ip_address(text)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((text, 0))


def _record(info: ServiceInfo) -> tuple[object, ...]:
    return (info.key, info.text, info.port, info.addresses)


def _summary(instance: Instance) -> tuple[object, ...]:
    return (
        instance.gateway_id,
        instance.name,
        instance.lead_number,
        instance.ip,
        instance.ssh_user,
        instance.ssh_port,
        instance.version,
    )


class Discovery:
    """Announces `me` over mDNS and reports peers appearing and leaving.

    One-shot: `run()` once; `stop()` makes it send goodbyes, close zeroconf and return.
    """

    name = "discovery"

    def __init__(
        self,
        me: Instance,
        settings: DiscoverySettings,
        emit: Callable[[Observation], None],
        *,
        resolve_timeout_ms: int = RESOLVE_TIMEOUT_MS,
    ) -> None:
        self._settings = settings
        self._emit = emit
        self._resolve_timeout_ms = resolve_timeout_ms
        self._me = me
        self._info = own_service_info(me, settings.service_type)
        self._wake = asyncio.Event()
        self._failure: Exception | None = None
        self._lock = asyncio.Lock()  # guards our own record: register, update, unregister
        self._aiozc: AsyncZeroconf | None = None
        self._registered: AsyncServiceInfo | None = None
        self._broadcasts: set[asyncio.Future[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        # Keyed by service name, lower-cased (DNS names compare case-insensitively).
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._stale: set[str] = set()  # changed again while being resolved
        self._peers: dict[str, Instance] = {}
        self._warned: dict[str, tuple[str, ...]] = {}
        self._own_keys: set[str] = set()  # every name we announced, for our own echoes

    async def run(self, ready: asyncio.Event) -> None:
        """Browse and announce; set `ready` once announced and browsing; return after stop()."""
        if self._aiozc is not None:
            raise RuntimeError("Discovery.run() is already running")
        interfaces = list(self._settings.interfaces or ()) or InterfaceChoice.All
        try:
            if isinstance(interfaces, list):
                _check_local_addresses(interfaces)
            aiozc = AsyncZeroconf(interfaces=interfaces)
        except (OSError, ValueError) as exc:
            where = "all interfaces" if interfaces is InterfaceChoice.All else interfaces
            raise ClawdError(
                f"cannot open mDNS sockets on {where}: {exc} (check discovery.interfaces)"
            ) from None
        self._aiozc = aiozc
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                browser = AsyncServiceBrowser(
                    aiozc.zeroconf, [self._settings.service_type], handlers=[self._on_change]
                )
                register = tg.create_task(self._register(aiozc, ready), name="mdns-register")
                try:
                    await self._wake.wait()
                    if self._failure is not None:
                        raise self._failure
                finally:
                    self._tg = None
                    await browser.async_cancel()
                    register.cancel()
                    for task in self._resolving.values():
                        task.cancel()
        finally:
            await self._close(aiozc)

    def stop(self) -> None:
        """Ask run() to withdraw our record (mDNS goodbye), close zeroconf and return."""
        self._wake.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """Live reload: changed details of this instance are announced."""
        if "instance" in changed:
            await self.update_me(self_instance(settings))

    async def update_me(self, me: Instance) -> None:
        """Announce changed details of this instance (live reload); no-op when unchanged."""
        info = own_service_info(me, self._settings.service_type)
        async with self._lock:
            old = self._info
            self._me, self._info = me, info
            registered, aiozc = self._registered, self._aiozc
            if registered is None or aiozc is None:
                return  # run() registers self._info when it gets there
            if _record(info) == _record(old):
                return
            if info.key == registered.key:
                await self._await_broadcast(await aiozc.async_update_service(info))
            else:  # new gateway id: new service name
                await self._await_broadcast(await aiozc.async_unregister_service(registered))
                self._registered = None
                await self._await_broadcast(await self._register_info(aiozc, info))
            self._registered = info
        log.info("mdns_reannounced", service=clean_text(info.name), gateway=me.gateway_id)

    async def _register(self, aiozc: AsyncZeroconf, ready: asyncio.Event) -> None:
        async with self._lock:
            info = self._info
            broadcast = await self._register_info(aiozc, info)
            self._registered = info
        log.info(
            "mdns_started",
            service=clean_text(info.name),
            gateway=self._me.gateway_id,
            ip=self._me.ip,
            port=info.port,
        )
        ready.set()
        await self._await_broadcast(broadcast)

    async def _register_info(self, aiozc: AsyncZeroconf, info: AsyncServiceInfo) -> Awaitable[Any]:
        self._own_keys.add(info.key)
        try:
            return await aiozc.async_register_service(info)
        except NonUniqueNameException:
            raise ClawdError(
                f"another machine already announces {info.name!r} over mDNS; "
                "give each instance a unique instance.gatewayId"
            ) from None

    async def _await_broadcast(self, broadcast: Awaitable[Any]) -> None:
        """Wait for zeroconf's announcement repeats; run() cancels them on shutdown."""
        future = asyncio.ensure_future(broadcast)
        self._broadcasts.add(future)
        future.add_done_callback(self._broadcasts.discard)
        await asyncio.wait({future})  # its own outcome is zeroconf's business, not ours

    async def _close(self, aiozc: AsyncZeroconf) -> None:
        async with self._lock:
            self._aiozc = None
            self._registered = None
        broadcasts = set(self._broadcasts)
        for future in broadcasts:
            future.cancel()
        if broadcasts:
            await asyncio.wait(broadcasts)
        await aiozc.async_close()  # goodbyes for our record, then the sockets
        self._resolving.clear()  # a task cancelled before its first step skips its finally
        self._peers.clear()
        self._warned.clear()
        self._stale.clear()
        log.info("mdns_stopped", gateway=self._me.gateway_id)

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake.set()

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Called by zeroconf from its packet handler: an exception here would be lost
        # in the event loop's handler (and skip other listeners), so end run() with it.
        try:
            self._handle_change(zeroconf, service_type, name, state_change)
        except Exception as exc:
            self._fail(exc)

    def _handle_change(
        self, zc: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        key = name.lower()
        tg = self._tg
        if tg is None or key in self._own_keys:
            return
        if state_change is ServiceStateChange.Removed:
            if (task := self._resolving.pop(key, None)) is not None:
                task.cancel()
            self._stale.discard(key)
            self._warned.pop(key, None)
            if (peer := self._peers.pop(key, None)) is not None:
                self._gone(peer, name)
            return
        if key in self._resolving:
            self._stale.add(key)
            return
        try:  # a name zeroconf cannot resolve is not worth a task
            AsyncServiceInfo(service_type, name)
        except BadTypeInNameException as exc:
            self._warn(key, name, (f"invalid service name: {exc}",))
            return
        self._resolving[key] = tg.create_task(
            self._resolve(zc, service_type, name), name=f"mdns-resolve {clean_text(name)}"
        )

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        key = name.lower()
        try:
            while True:
                self._stale.discard(key)
                info = AsyncServiceInfo(service_type, name)
                if await info.async_request(zc, self._resolve_timeout_ms):
                    self._accept(key, name, info)
                else:
                    seconds = self._resolve_timeout_ms / 1000
                    self._warn(key, name, (f"no SRV/TXT/address answer within {seconds:g} s",))
                if key not in self._stale:
                    return
        finally:
            if self._resolving.get(key) is asyncio.current_task():
                del self._resolving[key]

    def _accept(self, key: str, name: str, info: ServiceInfo) -> None:
        instance, problems = parse_peer(info)
        if instance is not None and instance.gateway_id == self._me.gateway_id:
            instance, problems = None, (*problems, "announces this instance's own gateway_id")
        self._warn(key, name, problems)
        previous = self._peers.pop(key, None)
        if previous is not None and (
            instance is None or previous.gateway_id != instance.gateway_id
        ):
            self._gone(previous, name)
            previous = None
        if instance is None:
            return
        self._peers[key] = instance
        if previous is None or _summary(previous) != _summary(instance):
            log.info(
                "mdns_peer_appeared" if previous is None else "mdns_peer_changed",
                gateway=instance.gateway_id,
                name=instance.name,
                ip=instance.ip,
                port=instance.ssh_port,
                lead_number=instance.lead_number,
                version=instance.version,
            )
        self._emit(MdnsSeen(instance, at=utcnow()))

    def _gone(self, peer: Instance, name: str) -> None:
        if any(other.gateway_id == peer.gateway_id for other in self._peers.values()):
            return  # still announced under another service name
        log.info("mdns_peer_gone", gateway=peer.gateway_id, service=clean_text(name))
        self._emit(MdnsGone(peer.gateway_id, at=utcnow()))

    def _warn(self, key: str, name: str, problems: tuple[str, ...]) -> None:
        """Log a peer's problems once, and again only when they change."""
        if not problems:
            self._warned.pop(key, None)
            return
        if self._warned.get(key) == problems:
            return
        self._warned[key] = problems
        log.warning("mdns_peer_invalid", service=clean_text(name), problems="; ".join(problems))
