"""Repository URLs as they may be shown: credentials in them are masked."""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ — userinfo stops at the first '/', '@' or whitespace.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# Over ssh a user name ("git") is an account, not a secret; over http(s) it is
# often the token itself (https://<token>@github.com/…).
_KEEP_USER_SCHEMES = ("ssh://", "git+ssh://", "ssh+git://")


def _mask_one(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    user, sep, _password = userinfo.partition(":")
    if sep:
        return f"{scheme}{user}:{MASK}@" if user else f"{scheme}{MASK}@"
    if scheme.lower() in _KEEP_USER_SCHEMES:
        return match.group(0)
    return f"{scheme}{MASK}@"


def mask_url(url: str) -> str:
    """`url` with any password or http(s) user name replaced by ***."""
    return _USERINFO.sub(_mask_one, url)


def mask_text(text: str, url: str | None = None) -> str:
    """`text` (e.g. git's stderr) with every URL's credentials, and `url` itself, masked."""
    if url:
        masked = mask_url(url)
        if masked != url:
            text = text.replace(url, masked)
    return _USERINFO.sub(_mask_one, text)
