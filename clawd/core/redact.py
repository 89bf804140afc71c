"""Values as config errors may show them: passwords, URL credentials and DSNs masked."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
MAX_SHOWN = 80
SECRET_HINTS = ("password", "passwd", "pass", "secret", "token", "dsn")

# scheme://user:password@ and scheme://token@ (the user part of an https URL is often a token).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# libpq keyword form: "host=db password=hunter2", also quoted: password='a b'.
_KEYWORD = re.compile(
    r"(?P<key>\b(?:password|passwd|pass|secret|token)\s*=\s*)(?P<value>'[^']*'|\"[^\"]*\"|\S+)",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """True for a key that names a secret (config keys and log fields alike)."""
    lowered = key.lower()
    return any(hint in lowered for hint in SECRET_HINTS)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _ = match.group("userinfo").partition(":")
    keep = f"{user}:" if sep and user else ""
    return f"{match.group('scheme')}{keep}{MASK}@"


def mask_text(text: str) -> str:
    """`text` with URL credentials and `password=…` values replaced by ***."""
    text = _USERINFO.sub(_mask_userinfo, text)
    return _KEYWORD.sub(lambda m: f"{m.group('key')}{MASK}", text)


def masked(value: Any) -> Any:
    """A copy of a JSON value with secret keys' values and credentials in strings masked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {
            key: MASK if isinstance(key, str) and is_secret_key(key) else masked(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    return value


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def shown_value(value: Any, *, strict: bool = False) -> str:
    """`value` for an error line, at most MAX_SHOWN characters, credentials masked.

    strict (a section holding credentials): only numbers, booleans and null are shown;
    any string or container may be a password given in the wrong shape.
    """
    if strict and not (value is None or isinstance(value, bool | int | float)):
        return f"{_kind(value)} (not shown: it may hold a password)"
    text = repr(masked(value))
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
