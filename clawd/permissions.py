"""config.json holds the PostgreSQL password: say so when others can read it."""

from __future__ import annotations

import stat
from pathlib import Path

import structlog

log = structlog.get_logger("clawd.permissions")


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
