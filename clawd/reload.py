"""Live reload: one locked path for config edits, SIGHUP and `clawd reload`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from clawd.errors import ConfigError
from clawd.settings import Settings, load_settings

log = structlog.get_logger("clawd.reload")

POLL_SECONDS = 0.5
DEBOUNCE_SECONDS = 0.3
# What cannot change under a running process (its files would move under it).
RESTART_ONLY = ("home", "instance.gatewayId")


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


Applier = Callable[[Settings, list[str]], Awaitable[None]]


class Reloader:
    def __init__(
        self,
        path: Path,
        current: Settings,
        apply: Applier,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.current = current
        self._apply = apply
        self._environ = environ
        self._lock = asyncio.Lock()

    async def reload(self, source: str) -> ReloadResult:
        async with self._lock:
            try:
                new = await asyncio.to_thread(
                    load_settings, self.path, self._environ, check_files=True
                )
            except ConfigError as exc:
                log.error(
                    "config_rejected",
                    source=source,
                    error=str(exc),
                    action="the running configuration stays",
                )
                return ReloadResult(False, error=str(exc))
            changed = changed_keys(self.current, new)
            if not changed:
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
            self.current = new
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

    def __init__(self, path: Path, on_change: Callable[[], Awaitable[object]]) -> None:
        self.path = path
        self.on_change = on_change
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    async def run(self, ready: asyncio.Event) -> None:
        seen = await asyncio.to_thread(_fingerprint, self.path)
        ready.set()
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), POLL_SECONDS)
                return
            except TimeoutError:
                pass
            now = await asyncio.to_thread(_fingerprint, self.path)
            if now == seen or now is None:
                continue
            await asyncio.sleep(DEBOUNCE_SECONDS)
            settled = await asyncio.to_thread(_fingerprint, self.path)
            if settled != now:
                continue  # still being written; look again next round
            seen = settled
            await self.on_change()
