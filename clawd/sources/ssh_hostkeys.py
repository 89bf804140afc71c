"""Which host keys clawd trusts: known_hosts files (re-read when they change) and, under
`hostKeyPolicy: accept-new`, the keys recorded on first use in <home>/known_hosts."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import asyncssh
import structlog

from clawd.config.ssh_files import (
    parse_known_hosts,
    read_text,
)
from clawd.core.atomic import write_atomic
from clawd.core.errors import ConfigError
from clawd.core.filesig import Signature, file_signature

log = structlog.get_logger("clawd.sources.pinger")
T = TypeVar("T")


def _pattern(host: str, port: int) -> str:
    """The known_hosts host pattern OpenSSH writes for host:port."""
    return host if port == 22 else f"[{host}]:{port}"


def _signature_or_none(path: Path) -> Signature | None:
    """The signature of a file that just failed to load (None if it cannot even be stat'ed)."""
    try:
        return file_signature(path)
    except OSError:
        return None


def _load_if_changed(
    path: Path, known: Signature | None, parse: Callable[[str], T]
) -> tuple[Signature | None, T | None]:
    """(signature, parsed `path`); parsed is None when the signature is still `known`.

    Blocking (stat, read, parse): run it in a thread. ConfigError (naming the file) when
    it cannot be read or parsed.
    """
    signature = file_signature(path)
    if signature == known:
        return signature, None
    return signature, parse(read_text(path) if signature else "")


def _key_text(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 AAAA…` without the comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _parse_tofu(text: str) -> dict[str, asyncssh.SSHKey]:
    keys: dict[str, asyncssh.SSHKey] = {}
    for line in text.splitlines():
        fields = line.split(None, 1)
        if len(fields) != 2 or line.startswith("#"):
            continue
        try:
            keys[fields[0]] = asyncssh.import_public_key(fields[1])
        except (asyncssh.KeyImportError, ValueError):
            continue  # not a line this class writes; OpenSSH would skip it too
    return keys


def _write_tofu(path: Path, keys: Mapping[str, asyncssh.SSHKey]) -> Signature | None:
    text = "".join(f"{pattern} {_key_text(key)}\n" for pattern, key in keys.items())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, text.encode(), mode=0o600)
    return file_signature(path)


class TrustOnFirstUse:
    """accept-new: the first key a peer shows is recorded in `path`; a different one is refused.

    The file is in OpenSSH known_hosts format, re-read when it changes on disk (delete a line
    to trust a peer's new key) and rewritten atomically (mode 0600) when keys are added.
    State changes only on the event loop; threads only read and write the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: Mapping[str, asyncssh.SSHKey] = {}
        self._signature: Signature | None = None
        self._dirty = False  # keys added since the last write started
        self._writing = False
        # Why the file cannot be read right now: no key is recorded (the file is not
        # overwritten) until it is readable again; the keys read before stay trusted.
        self.error: str | None = None

    def recorded(self, host: str, port: int) -> asyncssh.SSHKey | None:
        return self._keys.get(_pattern(host, port))

    async def refresh(self) -> None:
        """Re-read the file if it changed on disk (and no write of ours is pending)."""
        if self._writing or self._dirty:
            return
        try:
            signature, keys = await asyncio.to_thread(
                _load_if_changed, self.path, self._signature, _parse_tofu
            )
        except ConfigError as exc:
            signature = await asyncio.to_thread(_signature_or_none, self.path)
            if signature != self._signature:  # re-read (and reported) once it changes again
                self._signature = signature
                _report_unreadable(self.path, exc, "keys read before stay trusted; no new one is")
            self.error = str(exc)
            return
        if keys is not None and not (self._writing or self._dirty):
            self._keys, self._signature, self.error = keys, signature, None

    async def remember(self, host: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Trust `key` for host:port unless a key is recorded; True if it was added.

        Trusted at once; written to the file before returning, unless a write is already
        under way, which then also writes this key (a fleet's first start is one write per
        burst, not one per peer).
        """
        pattern = _pattern(host, port)
        if pattern in self._keys:
            return False
        self._keys = {**self._keys, pattern: key}
        self._dirty = True
        if self._writing:
            return True
        self._writing = True
        try:
            while self._dirty:
                self._dirty = False
                self._signature = await asyncio.to_thread(_write_tofu, self.path, self._keys)
        finally:
            self._writing = False
        return True


def _report_unreadable(path: Path, exc: ConfigError, action: str) -> None:
    # Once per change of the file, not per connection (callers see to that).
    log.error("ssh_file_unreadable", file=str(path), error=str(exc), action=action)


class KnownHostsFile:
    """known_hosts policy: only keys already in the file; re-read when the file changes.

    A file that turns unreadable (not UTF-8, a bad line, no permission) is reported once
    and the last good copy stays in force, so peers keep being pinged. One instance per
    path is shared by every Connector of the process (see `shared`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: asyncssh.SSHKnownHosts = asyncssh.import_known_hosts("")
        self._signature: Signature | None = None  # of the last version read, good or bad
        self._parsed = False  # a good copy has been read

    @classmethod
    def shared(cls, path: Path) -> KnownHostsFile:
        found = _KNOWN_HOSTS_FILES.get(path)
        if found is None:
            found = _KNOWN_HOSTS_FILES[path] = cls(path)
        return found

    async def load(self) -> asyncssh.SSHKnownHosts:
        known = self._signature
        try:
            signature, parsed = await asyncio.to_thread(
                _load_if_changed, self.path, known, lambda text: parse_known_hosts(text, self.path)
            )
        except ConfigError as exc:
            signature = await asyncio.to_thread(_signature_or_none, self.path)
            if signature != self._signature:  # a concurrent load may have reported it
                self._signature = signature
                action = "the last good copy stays in force" if self._parsed else "none trusted"
                _report_unreadable(self.path, exc, action)
            return self._known
        if parsed is not None and signature != self._signature:
            self._known, self._signature = parsed, signature
            if known is not None:
                log.info("known_hosts_reloaded", file=str(self.path))
            self._parsed = True
        return self._known


# Every Connector of the process reading one path shares its KnownHostsFile: one parse and
# one error line per change of the file, not one per Connector.
_KNOWN_HOSTS_FILES: weakref.WeakValueDictionary[Path, KnownHostsFile] = (
    weakref.WeakValueDictionary()
)
