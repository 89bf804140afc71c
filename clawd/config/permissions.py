"""File modes: what clawd creates is private; config.json (the user's file, holding the
PostgreSQL password) is only warned about when others can read it."""

from __future__ import annotations

import stat
from pathlib import Path

import structlog

log = structlog.get_logger("clawd.config.permissions")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private(path: Path, mode: int) -> None:
    """chmod `path` to `mode` unless it already is (a mkdir/open mode is cut by the umask
    only downwards; an older clawd's looser copy is tightened here). Blocking."""
    if stat.S_IMODE(path.lstat().st_mode) != mode:
        path.chmod(mode)


def warn_if_readable_by_others(path: Path) -> bool:
    """Log `config_readable_by_others` when group or others may read `path`; True if so.

    The file is the user's: clawd only warns (it never changes the mode itself).
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return False  # loading it reports the real problem
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return False
    log.warning(
        "config_readable_by_others",
        path=str(path),
        mode=f"{mode:04o}",
        fix=f"chmod 600 {path}",
    )
    return True
