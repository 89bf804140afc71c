"""journald's native protocol: one datagram per entry, with fields journalctl can filter.

`journalctl -u clawd CLAW_EVENT=offline CLAW_GATEWAY=gw-b` works because every
incident carries its own fields, not only a line of text.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Mapping
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_VALID_FIELD = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")

# syslog priorities
ERROR, WARNING, NOTICE, INFO = 3, 4, 5, 6


def field_name(key: str) -> str:
    """`missed_pings` -> `CLAW_MISSED_PINGS`; anything else becomes `_`."""
    name = "CLAW_" + re.sub(r"[^A-Z0-9_]", "_", key.upper())
    return name[:64]


def encode_entry(fields: Mapping[str, Any]) -> bytes:
    """Serialise fields; values with newlines use the length-prefixed binary form."""
    out = bytearray()
    for key, value in fields.items():
        if not _VALID_FIELD.match(key):
            raise ValueError(f"invalid journal field name {key!r}")
        data = str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """Sends entries to journald's socket; never raises into the caller's path."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "clawd") -> None:
        self.path = path
        self.identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    @classmethod
    def if_attached(cls) -> JournalSender | None:
        """A sender when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
        stream = os.environ.get("JOURNAL_STREAM", "")
        try:
            st = os.fstat(2)
        except OSError:
            return None
        if stream != f"{st.st_dev}:{st.st_ino}":
            return None
        return cls(os.environ.get("CLAW_JOURNAL_SOCKET", JOURNAL_SOCKET))

    def send(self, message: str, priority: int, fields: Mapping[str, Any]) -> bool:
        entry = {
            "MESSAGE": message,
            "PRIORITY": priority,
            "SYSLOG_IDENTIFIER": self.identifier,
            **{field_name(k): v for k, v in fields.items() if v is not None},
        }
        try:
            self._sock.sendto(encode_entry(entry), self.path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._sock.close()
