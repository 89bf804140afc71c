"""logfmt values that read back as what they were: a peer named `x event=offline` stays one value.

structlog's LogfmtRenderer (26.1) quotes only values with a space, `=` or `"`: a tab, a
carriage return or an escape sequence passes raw, and a backslash outside quotes reads
ambiguously. Here any value that is not plain printable text without `\\` is quoted, and
inside quotes `\\`, `"` and every control character are escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from clawd.core.text import escape_char


def _escape(char: str) -> str:
    if char == '"':
        return '\\"'
    return escape_char(char) if char == "\\" or not char.isprintable() else char


def _plain(text: str) -> bool:
    return text != "" and text.isprintable() and not any(c in text for c in ' ="\\')


def value(raw: Any) -> str:
    """One value as logfmt text: as is when plain, else quoted and escaped."""
    if raw is None:
        return ""
    text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    if _plain(text):
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


def line(pairs: Iterable[tuple[str, Any]]) -> str:
    """`key=value` pairs joined by spaces; keys are clawd's own (snake_case), never input."""
    return " ".join(f"{key}={value(raw)}" for key, raw in pairs)


class LogfmtRenderer:
    """structlog's last processor: the keys in `key_order` first, then the rest as given."""

    def __init__(self, key_order: Iterable[str]) -> None:
        self.key_order = tuple(key_order)

    def __call__(self, _logger: Any, _name: str, event: Mapping[str, Any]) -> str:
        first = [(k, event[k]) for k in self.key_order if k in event]
        rest = [(k, v) for k, v in event.items() if k not in self.key_order]
        return line([*first, *rest])
