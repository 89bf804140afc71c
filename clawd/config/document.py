"""The config.json a running clawd validated and put in force, with the sha256 of its bytes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """The config.json a running clawd validated and put in force: what it distributes.

    Taken from the very bytes that were validated (see reload.load_in_force), never read
    again from the file, so an edit clawd rejected is never sent to a peer.
    """

    data: dict[str, Any]  # the file's JSON object; treat as read-only
    digest: str  # sha256 of the file's bytes
