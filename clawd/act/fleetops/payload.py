"""What the leader sends: config.json as read for it, and the install payload.

The config.json each peer receives is shaped in peer_config.py.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawd.config.document import digest
from clawd.core.errors import ConfigError

MAX_PAYLOAD_FILES = 1000
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


def read_config(path: Path) -> tuple[dict[str, Any], str]:
    """config.json as a dict and the sha256 of its bytes (blocking: call in a thread).

    Parsed only, not validated: never distribute what this returns (ConfigDocument).
    """
    try:
        data = path.read_bytes()
        parsed = json.loads(data)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read for distribution: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path}: must hold a JSON object")
    return parsed, digest(data)


@dataclass(frozen=True, slots=True)
class PayloadFile:
    relative: str  # POSIX path under the claw-clan home
    data: bytes
    mode: int


def collect_scripts(scripts_dir: Path) -> list[PayloadFile]:
    """Every regular file under scripts/ (blocking: call in a thread); symlinks are skipped."""
    if not scripts_dir.is_dir():
        raise ConfigError(f"{scripts_dir}: no install payload (the scripts/ folder is missing)")
    files: list[PayloadFile] = []
    total = 0
    for root, dirs, names in os.walk(scripts_dir):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            if len(files) >= MAX_PAYLOAD_FILES or total > MAX_PAYLOAD_BYTES:
                raise ConfigError(
                    f"{scripts_dir}: install payload too large "
                    f"(limit {MAX_PAYLOAD_FILES} files, {MAX_PAYLOAD_BYTES >> 20} MiB)"
                )
            relative = path.relative_to(scripts_dir.parent).as_posix()
            mode = 0o700 if st.st_mode & stat.S_IXUSR else 0o600
            files.append(PayloadFile(relative, path.read_bytes(), mode))
    return files
