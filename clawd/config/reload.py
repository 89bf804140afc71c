"""Live reload: one locked path for config edits, SIGHUP and `clawd reload`."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from clawd.config.document import ConfigDocument, digest
from clawd.config.load import check_ssh_files, parse_config, read_config_bytes, settings_from_data
from clawd.config.settings import Settings, default_config_path
from clawd.core.errors import ConfigError
from clawd.core.periodic import Periodic

log = structlog.get_logger("clawd.config.reload")

POLL_SECONDS = 0.5
DEBOUNCE_SECONDS = 0.3
# What cannot change under a running process (its files would move under it).
RESTART_ONLY = ("home", "instance.gatewayId")


def load_in_force(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    check_files: bool = False,
) -> tuple[Settings, ConfigDocument]:
    """Validated Settings and the document they came from, out of ONE read of config.json.

    What a running clawd distributes is that document: the file is never read again for
    it, so an edit made after validation (or one that fails it) is never sent. Blocking.
    """
    env = os.environ if environ is None else environ
    config_path = (path or default_config_path(env)).expanduser()
    raw = read_config_bytes(config_path)
    data = parse_config(config_path, raw)
    settings = settings_from_data(
        copy.deepcopy(data), env, config_dir=config_path.parent.resolve(), source=str(config_path)
    )
    if check_files:
        check_ssh_files(settings, config_path)
    return settings, ConfigDocument(data, digest(raw))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(data, SecretStr):
        return {prefix: data.get_secret_value()}
    return {prefix: data}


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted camelCase keys whose values differ (names only: values may be secrets)."""
    a = _flatten(old.model_dump(by_alias=True))
    b = _flatten(new.model_dump(by_alias=True))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


@dataclass(slots=True)
class ReloadResult:
    ok: bool
    changed: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class InForce:
    """The running Settings and the raw config.json they came from: one value, so the
    document never moves on without them (it alone changes only when an edit leaves the
    Settings equal)."""

    settings: Settings
    document: ConfigDocument


Applier = Callable[[Settings, list[str]], Awaitable[None]]
# Told each document put in force (those whose Settings equal the running ones included).
DocumentListener = Callable[[ConfigDocument], None]


class Reloader:
    """Validates config.json and puts it in force, or keeps the running configuration.

    `in_force` never takes a rejected file.
    """

    def __init__(
        self,
        path: Path,
        in_force: InForce,
        apply: Applier,
        environ: Mapping[str, str] | None = None,
        *,
        on_document: Sequence[DocumentListener] = (),
    ) -> None:
        self.path = path
        self.in_force = in_force
        self._apply = apply
        self._environ = environ
        self._on_document = tuple(on_document)
        self._lock = asyncio.Lock()

    def _put_in_force(self, in_force: InForce) -> None:
        self.in_force = in_force
        for listener in self._on_document:
            listener(in_force.document)

    async def reload(self, source: str) -> ReloadResult:
        async with self._lock:
            try:
                new, document = await asyncio.to_thread(
                    load_in_force, self.path, self._environ, check_files=True
                )
            except ConfigError as exc:
                log.error(
                    "config_rejected",
                    source=source,
                    error=str(exc),
                    action="the running configuration stays",
                )
                return ReloadResult(False, error=str(exc))
            changed = changed_keys(self.in_force.settings, new)
            if not changed:
                # Same Settings; the file may still differ in form (order, defaults spelled
                # out): it is valid, so peers get it as it now reads.
                self._put_in_force(InForce(self.in_force.settings, document))
                log.info("config_unchanged", source=source)
                return ReloadResult(True)
            fixed = [k for k in changed if k in RESTART_ONLY]
            if fixed:
                error = f"{', '.join(fixed)} cannot change while clawd runs; restart it"
                log.error(
                    "config_rejected",
                    source=source,
                    error=error,
                    action="the running configuration stays",
                )
                return ReloadResult(False, changed, error)
            await self._apply(new, changed)
            self._put_in_force(InForce(new, document))
            log.info("config_reloaded", source=source, changed=",".join(changed))
            return ReloadResult(True, changed)


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ConfigWatcher:
    """Notices edits to config.json, including editors' write-new-then-rename saves.

    Polls the path's inode, mtime and size: a rename gives a new inode, so the
    watch follows the name, not the old file. Debounced: several writes in a row
    cause one reload.
    """

    name = "config-watch"

    def __init__(self, path: Path, on_change: Callable[[], Awaitable[object]]) -> None:
        self.path = path
        self.on_change = on_change
        self._seen: tuple[int, int, int] | None = None
        self._ticker = Periodic(self._look, POLL_SECONDS)

    def stop(self) -> None:
        self._ticker.stop()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """The watched path is the one clawd was started with."""

    async def run(self, ready: asyncio.Event) -> None:
        self._seen = await asyncio.to_thread(_fingerprint, self.path)
        await self._ticker.run(ready)

    async def _look(self) -> None:
        now = await asyncio.to_thread(_fingerprint, self.path)
        if now == self._seen or now is None:
            return
        await asyncio.sleep(DEBOUNCE_SECONDS)
        settled = await asyncio.to_thread(_fingerprint, self.path)
        if settled != now:
            return  # still being written; look again next round
        self._seen = settled
        await self.on_change()
