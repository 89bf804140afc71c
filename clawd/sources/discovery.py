"""mDNS: announce this instance and report peers' announcements as observations."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from clawd.config.sections import DiscoverySettings
from clawd.config.settings import Settings, self_instance
from clawd.core.errors import ClawdError
from clawd.core.model import Instance, utcnow
from clawd.core.observations import MdnsGone, MdnsSeen, Observation
from clawd.core.text import clean_text
from clawd.sources.mdns_conflict import instance_part, register_unique
from clawd.sources.mdns_peer import parse_peer, peer_summary
from clawd.sources.mdns_record import instance_label, own_service_info, record_key

log = structlog.get_logger("clawd.sources.discovery")

RESOLVE_TIMEOUT_MS = 3000


def _check_local_addresses(addresses: list[str]) -> None:
    """OSError/ValueError unless every address is one of this machine's.

    Zeroconf leaks its already-open sockets when an interface fails, so check first.
    """
    for text in addresses:
        address = ipaddress.ip_address(text)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((text, 0))


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
        # Milliseconds at start: a restarted clawd's record is new to every cache as well.
        self._revision = time.time_ns() // 1_000_000
        self._number = 1  # 2, 3 … when another machine announced our instance name first
        self._info = own_service_info(me, settings.service_type, self._revision)
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
        async with self._lock:
            old = self._info
            # A new gateway id is a new name: the wanted one is tried first again.
            number = self._number if me.gateway_id == self._me.gateway_id else 1
            info = own_service_info(me, self._settings.service_type, self._revision, number)
            if record_key(info) != record_key(old):
                self._revision += 1
                info = own_service_info(me, self._settings.service_type, self._revision, number)
            self._me, self._info, self._number = me, info, number
            registered, aiozc = self._registered, self._aiozc
            if registered is None or aiozc is None:
                return  # run() registers self._info when it gets there
            if record_key(info) == record_key(registered):
                return
            if info.key == registered.key:
                await self._await_broadcast(await aiozc.async_update_service(info))
            else:  # new gateway id: new service name
                await self._await_broadcast(await aiozc.async_unregister_service(registered))
                self._registered = None
                await self._await_broadcast(await self._register_info(aiozc))
                info = self._info
            self._registered = info
        log.info("mdns_reannounced", service=clean_text(info.name), gateway=me.gateway_id)

    def service_names(self, gateway_id: str) -> tuple[str, ...]:
        """The service names (lower-cased) that announce this gateway id, as last resolved."""
        return tuple(sorted(k for k, peer in self._peers.items() if peer.gateway_id == gateway_id))

    def zeroconf(self) -> Zeroconf | None:
        """The running zeroconf (None before run() and after stop()), for mDNS queries."""
        return self._aiozc.zeroconf if self._aiozc is not None else None

    def announced(self) -> dict[str, str] | None:
        """The instance name announced and the one wanted (they differ after a conflict)."""
        if self._registered is None:
            return None
        wanted = instance_label(self._me.gateway_id)
        return {"name": clean_text(instance_part(self._registered)), "wanted": clean_text(wanted)}

    async def _register(self, aiozc: AsyncZeroconf, ready: asyncio.Event) -> None:
        async with self._lock:
            broadcast = await self._register_info(aiozc)
            info = self._registered = self._info
        log.info(
            "mdns_started",
            service=clean_text(info.name),
            gateway=self._me.gateway_id,
            ip=self._me.ip,
            port=info.port,
        )
        ready.set()
        await self._await_broadcast(broadcast)

    async def _register_info(self, aiozc: AsyncZeroconf) -> Awaitable[Any]:
        """Register self._me under a free name; self._info and self._number become it."""
        me, revision = self._me, self._revision

        def build(number: int) -> AsyncServiceInfo:
            info = own_service_info(me, self._settings.service_type, revision, number)
            # Our own echoes are no peer; neither is the other holder of a name we wanted
            # (it claims our name, and a record claiming our gateway id is no peer either).
            self._own_keys.add(info.key)
            return info

        self._info, self._number, broadcast = await register_unique(aiozc, build)
        return broadcast

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
        if previous is None or peer_summary(previous) != peer_summary(instance):
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
