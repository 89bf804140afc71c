"""Peer-supplied text made safe to print: it cannot move the cursor, recolour or forge lines.

A peer's name, a command's output or a config key may hold a newline, an escape sequence or
a bidi override. Each way of showing such text uses one of these, by what its reader needs:

* `printable`: every character outside printable ASCII as its Python escape (`\\n`,
  `\\x1b`, `\\xe9`); the same text always gives the same ASCII (tables, incident lines);
* `escape_unprintable`: only non-printable characters escaped, accents kept (reports);
* `replace_unprintable`: non-printable characters as "?" (one-line error summaries);
* `escape_char`: one character as a Python string literal spells it (logfmt's quoting);
* `clean_text`: control, format (bidi), surrogate, private-use, unassigned characters and line
  breaks as "?", other Unicode kept (names announced over mDNS).
"""

from __future__ import annotations

import unicodedata

# Control, format (bidi overrides), surrogate, private-use, unassigned, line/paragraph breaks.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escape_char(char: str) -> str:
    """`char` as a Python string literal spells it: `\\n`, `\\x1b`, `\\u202e`, `\\\\`."""
    return char.encode("unicode_escape").decode("ascii")


def printable(text: str) -> str:
    """`text` in printable ASCII: every other character (and `\\`) escaped."""
    return text.encode("unicode_escape").decode("ascii")


def escape_unprintable(text: str) -> str:
    """`text` with every non-printable character (newline, ESC, bidi override…) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else escape_char(c) for c in text)


def replace_unprintable(text: str, mark: str = "?") -> str:
    """`text` with every non-printable character replaced by `mark`."""
    return "".join(c if c.isprintable() else mark for c in text)


def clean_text(text: str) -> str:
    """`text` with every character unsafe in a log line or a file replaced by '?'."""
    return "".join("?" if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")
