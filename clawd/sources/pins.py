"""Host-key pins: which SSH host key proved which gateway id (`<home>/trusted-peers.json`).

A gateway id is bound to the host key that first proved it over SSH (its own state.json,
read over a connection with that key, named the id). From then on the id is that key: an
address that shows another key for it is refused (even one from known_hosts), and the
pinned key is accepted at any address (a peer whose DHCP lease moved keeps its identity).
`clawd peer trust` pins a key as the operator's (trust `operator`: it may receive secrets);
`clawd peer forget` removes a pin.

The file is JSON, written atomically with mode 0600, re-read when it changes on disk (the
CLI edits it while a daemon runs); a bad file is a ConfigError naming it, and the pins read
before stay in force.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from clawd.config.ssh_files import read_text
from clawd.core.atomic import write_atomic
from clawd.core.errors import ConfigError
from clawd.core.filesig import Signature, file_signature
from clawd.core.trust import Trust

log = structlog.get_logger("clawd.sources.pins")

PINS_FILE_NAME = "trusted-peers.json"
PIN_TRUSTS = (Trust.FIRST_USE, Trust.KNOWN_HOSTS, Trust.OPERATOR)


def key_text(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 AAAA…` without the comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


@dataclass(frozen=True, slots=True)
class Pin:
    gateway_id: str
    key: str  # OpenSSH public key line, "ssh-ed25519 AAAA…"
    fingerprint: str  # "SHA256:…", as `ssh-keygen -l` prints it
    trust: Trust  # how the key came to be trusted when it was pinned
    host: str  # where it was last proven
    port: int
    pinned_at: str  # ISO 8601

    def matches(self, key: asyncssh.SSHKey) -> bool:
        return key_text(key) == self.key

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "fingerprint": self.fingerprint,
            "trust": self.trust.value,
            "host": self.host,
            "port": self.port,
            "pinnedAt": self.pinned_at,
        }


def _pin_from_json(path: Path, gateway_id: str, obj: object) -> Pin:
    where = f"{path}: pin {gateway_id!r}"
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be an object")
    try:
        key = obj["key"]
        trust = Trust(obj["trust"])
        host, port = obj.get("host", ""), obj.get("port", 22)
        asyncssh.import_public_key(key)
    except KeyError as exc:
        raise ConfigError(f"{where} lacks {exc.args[0]!r}") from None
    except (ValueError, TypeError, asyncssh.KeyImportError):
        allowed = ", ".join(t.value for t in PIN_TRUSTS)
        raise ConfigError(
            f"{where}: key must be an OpenSSH public key, trust one of {allowed}"
        ) from None
    if trust not in PIN_TRUSTS or not isinstance(host, str) or not isinstance(port, int):
        raise ConfigError(f"{where}: trust, host or port has a wrong value")
    fingerprint = asyncssh.import_public_key(key).get_fingerprint()
    return Pin(gateway_id, key, fingerprint, trust, host, port, str(obj.get("pinnedAt", "")))


def parse_pins(path: Path, text: str) -> dict[str, Pin]:
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    peers = doc.get("peers") if isinstance(doc, dict) else None
    if not isinstance(peers, dict):
        raise ConfigError(f'{path}: must be {{"peers": {{GATEWAY_ID: pin, …}}}}')
    return {gid: _pin_from_json(path, gid, obj) for gid, obj in peers.items()}


def read_pins(path: Path) -> dict[str, Pin]:
    """Blocking: the pins in `path` ({} if there is no file); ConfigError naming the file."""
    if not path.exists():
        return {}
    return parse_pins(path, read_text(path))


def write_pins(path: Path, pins: dict[str, Pin]) -> None:
    """Blocking: write every pin, atomically, mode 0600."""
    body = {"peers": {gid: pins[gid].to_json() for gid in sorted(pins)}}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(body, indent=2) + "\n").encode(), mode=0o600)


class PinStore:
    """The daemon's pins: read on the loop's behalf in threads, changed only on the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pins: dict[str, Pin] = {}
        self._signature: Signature | None = None
        self._lock = asyncio.Lock()
        self.error: str | None = None

    @classmethod
    def for_home(cls, home: Path) -> PinStore:
        return cls(home / PINS_FILE_NAME)

    def get(self, gateway_id: str) -> Pin | None:
        return self._pins.get(gateway_id)

    def all(self) -> dict[str, Pin]:
        return dict(self._pins)

    async def refresh(self) -> None:
        """Re-read the file if it changed on disk (a `clawd peer trust/forget` meanwhile)."""
        signature = await asyncio.to_thread(file_signature, self.path)
        if signature == self._signature:
            return
        async with self._lock:
            try:
                pins = await asyncio.to_thread(read_pins, self.path)
            except (ConfigError, OSError) as exc:
                if self.error != str(exc):
                    log.error("pins_unreadable", file=str(self.path), error=str(exc))
                self.error, self._signature = str(exc), signature
                return
            self._pins, self._signature, self.error = pins, signature, None

    async def pin(self, pin: Pin) -> None:
        """Record `pin` (replacing one for its gateway id) and write the file."""
        async with self._lock:
            latest = await asyncio.to_thread(_read_quietly, self.path, self._pins)
            latest[pin.gateway_id] = pin
            await asyncio.to_thread(write_pins, self.path, latest)
            self._pins = latest
            self._signature = await asyncio.to_thread(file_signature, self.path)


def _read_quietly(path: Path, fallback: dict[str, Pin]) -> dict[str, Pin]:
    """The file's pins (another process may have added some), or `fallback` if unreadable."""
    try:
        return read_pins(path)
    except (ConfigError, OSError):
        return dict(fallback)
