"""Is a clawd running for this home? Asked by every command that must not race the
daemon (status, config push, skills sync, backup restore), so it lives in none of them."""

from __future__ import annotations

import socket
from pathlib import Path

from clawd.serve.control import socket_path


def daemon_running(home: Path) -> bool:
    """True when a clawd answers on this home's control socket."""
    path = socket_path(home)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
