"""Fake claw-clan peers announced over mDNS from another process.

The test process starts ``python mdnspeers.py`` (see ``MdnsPeers``), which registers
every peer with its own ``AsyncZeroconf`` and then obeys one JSON command per stdin
line: ``unregister`` (send goodbyes for one peer), ``update`` (new TXT) and ``quit``
(goodbyes for all, exit). It exits on stdin EOF too, so a crashed test leaves nothing.
Replies are JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT = 10.0
REPLY_TIMEOUT = 5.0


def txt_record(props: Mapping[str, str | bytes | None]) -> bytes:
    """Encode TXT properties as RFC 6763 length-prefixed strings (``None`` = bare key)."""
    entries: list[bytes] = []
    for key, value in props.items():
        entry = key.encode()
        if value is not None:
            entry += b"=" + (value if isinstance(value, bytes) else value.encode())
        entries.append(entry)
    return raw_txt(entries)


def raw_txt(entries: Sequence[bytes]) -> bytes:
    """Encode TXT strings exactly as given: duplicates, empty entries, any bytes."""
    out = bytearray()
    for entry in entries:
        if len(entry) > 255:
            raise ValueError(f"TXT string longer than 255 bytes: {entry[:20]!r}…")
        out += bytes((len(entry),)) + entry
    return bytes(out)


@dataclass(frozen=True)
class FakePeer:
    """One service to announce: instance label, SRV port, A record, raw TXT."""

    instance: str
    address: str
    port: int
    txt: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "address": self.address,
            "port": self.port,
            "txt": self.txt.hex(),
        }


def claw_peer(
    gateway_id: str,
    *,
    name: str | None = None,
    lead_number: int | str = 100,
    ip: str = "127.0.0.2",
    ssh_user: str = "claw",
    ssh_port: int = 22,
    version: str = "0.1.0",
) -> FakePeer:
    """A well-formed claw-clan peer, as a real clawd would announce it."""
    txt = txt_record(
        {
            "gateway_id": gateway_id,
            "name": name or gateway_id,
            "lead_number": str(lead_number),
            "version": version,
            "ssh_user": ssh_user,
            "ssh_port": str(ssh_port),
        }
    )
    return FakePeer(instance=gateway_id, address=ip, port=ssh_port, txt=txt)


class MdnsPeers:
    """The test side: a subprocess announcing ``peers``; use as an async context manager."""

    def __init__(
        self,
        service_type: str,
        peers: Sequence[FakePeer],
        interfaces: Sequence[str] = ("127.0.0.1",),
        prefix: Sequence[str] = (),
    ) -> None:
        self.service_type = service_type
        self.peers = list(peers)
        self.interfaces = list(interfaces)
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", NS]: announce from there
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> MdnsPeers:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def proc(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError("MdnsPeers not started")
        return self._proc

    async def start(self) -> None:
        """Spawn the announcer; return once every peer is registered and announced."""
        spec = {
            "service_type": self.service_type,
            "interfaces": self.interfaces,
            "peers": [peer.to_json() for peer in self.peers],
        }
        self._proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            sys.executable,
            str(Path(__file__).resolve()),
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await self._expect("ready", START_TIMEOUT)

    async def unregister(self, instance: str) -> None:
        """Withdraw one peer with mDNS goodbyes; return once they were sent."""
        await self._command({"cmd": "unregister", "instance": instance})
        await self._expect("unregistered", REPLY_TIMEOUT)

    async def update(self, instance: str, txt: bytes) -> None:
        """Announce new TXT for one peer."""
        await self._command({"cmd": "update", "instance": instance, "txt": txt.hex()})
        await self._expect("updated", REPLY_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: the peers vanish without goodbyes, as in a power cut."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def aclose(self) -> None:
        """Ask for goodbyes and a clean exit; kill if that takes too long. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(b'{"cmd": "quit"}\n')
                await proc.stdin.drain()
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), REPLY_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self._proc = None

    async def _command(self, message: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(message).encode() + b"\n")
        await stdin.drain()

    async def _expect(self, event: str, timeout: float) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        async with asyncio.timeout(timeout):
            line = await stdout.readline()
        if not line:
            raise RuntimeError(f"mdnspeers exited (code {await self.proc.wait()}) before {event}")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("event") != event:
            raise RuntimeError(f"mdnspeers: expected {event}, got {reply}")
        return reply


class MdnsWatcher:
    """The test side: a subprocess browsing ``service_type`` and reporting what it sees.

    Each change comes back as a dict: ``event`` (added/updated/removed), ``name``, and
    for added/updated the resolved ``txt`` (str values), ``addresses`` and ``port``.
    """

    def __init__(self, service_type: str, interfaces: Sequence[str] = ("127.0.0.1",)) -> None:
        self.service_type = service_type
        self.interfaces = list(interfaces)
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> MdnsWatcher:
        spec = {"service_type": self.service_type, "interfaces": self.interfaces}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            json.dumps(spec),
            "watch",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await self.next_event(START_TIMEOUT)  # "browsing"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the watcher closes zeroconf and exits
        try:
            await asyncio.wait_for(proc.wait(), REPLY_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self._proc = None

    async def next_event(self, timeout: float) -> dict[str, Any]:
        """The next change the watcher saw; TimeoutError if none within `timeout`."""
        assert self._proc is not None and self._proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mdns watcher exited (code {await self._proc.wait()})")
        event: dict[str, Any] = json.loads(line)
        return event

    async def wait_for(self, event: str, name_prefix: str, timeout: float) -> dict[str, Any]:
        """Skip changes until `event` for a service whose name starts with `name_prefix`."""
        async with asyncio.timeout(timeout):
            while True:
                seen = await self.next_event(timeout)
                if seen["event"] == event and seen["name"].startswith(name_prefix):
                    return seen


# ---- the announcing process -------------------------------------------------------------


def _reply(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _announce(spec: dict[str, Any]) -> None:
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    service_type: str = spec["service_type"]

    def service_info(peer: dict[str, Any]) -> AsyncServiceInfo:
        name = f"{peer['instance']}.{service_type}"
        return AsyncServiceInfo(
            service_type,
            name,
            port=peer["port"],
            properties=bytes.fromhex(peer["txt"]),
            server=name,
            parsed_addresses=[peer["address"]],
        )

    peers = {peer["instance"]: peer for peer in spec["peers"]}
    infos = {instance: service_info(peer) for instance, peer in peers.items()}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    async with AsyncZeroconf(interfaces=spec["interfaces"]) as aiozc:
        # Probe all names at once (about 1 s), then wait out the announcements.
        broadcasts = await asyncio.gather(
            *(aiozc.async_register_service(info) for info in infos.values())
        )
        await asyncio.gather(*broadcasts)
        _reply("ready")
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            info = infos[command["instance"]]
            if command["cmd"] == "unregister":
                await (await aiozc.async_unregister_service(info))
                _reply("unregistered", instance=command["instance"])
            elif command["cmd"] == "update":
                peers[command["instance"]]["txt"] = command["txt"]
                infos[command["instance"]] = info = service_info(peers[command["instance"]])
                await (await aiozc.async_update_service(info))
                _reply("updated", instance=command["instance"])
        # Leaving the block unregisters the rest (goodbyes) and closes the sockets.
    transport.close()


async def _watch(spec: dict[str, Any]) -> None:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    async def report(zc: Zeroconf, service_type: str, name: str, change: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zc, 3000):
            _reply("unresolved", name=name)
            return
        _reply(
            change,
            name=name,
            txt=info.decoded_properties,
            addresses=info.parsed_addresses(),
            port=info.port,
        )

    tasks: set[asyncio.Task[None]] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            _reply("removed", name=name)
            return
        change = "added" if state_change is ServiceStateChange.Added else "updated"
        task = asyncio.create_task(report(zeroconf, service_type, name, change))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    async with AsyncZeroconf(interfaces=spec["interfaces"]) as aiozc:
        browser = AsyncServiceBrowser(aiozc.zeroconf, [spec["service_type"]], handlers=[on_change])
        _reply("browsing")
        await reader.read()  # until EOF
        await browser.async_cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    transport.close()


if __name__ == "__main__":
    main = _watch if sys.argv[2:] == ["watch"] else _announce
    asyncio.run(main(json.loads(sys.argv[1])))
