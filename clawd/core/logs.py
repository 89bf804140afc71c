"""structlog set-up: one event per line, key=value, secrets masked."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from clawd.core.logfmt import LogfmtRenderer
from clawd.core.logwriter import FailureReport, SafeLoggerFactory
from clawd.core.redact import MASK, is_secret_key

# syslog priorities, as journald reads them from a "<N>" line prefix.
PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def mask_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any key that names a secret."""
    for key in list(event):
        if is_secret_key(key):
            event[key] = MASK
    return event


def _drop_priority(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event.pop("syslog_priority", None)
    return event


def _journal_attached(stream: TextIO) -> bool:
    """True when `stream` is the journal's stdout/stderr stream (systemd sets JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


class PriorityPrefix:
    """Prefix each line with <N> so journald files it at the right priority."""

    def __init__(self, inner: structlog.types.Processor) -> None:
        self.inner = inner

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        prio = event.pop("syslog_priority", None) or PRIORITY.get(str(event.get("level")), 6)
        rendered = self.inner(logger, name, event)
        text = rendered.decode() if isinstance(rendered, bytes) else str(rendered)
        return f"<{prio}>{text}"


def configure_logging(
    level: str = "info", stream: TextIO | None = None, home: Path | None = None
) -> None:
    """Log to `stream` (stderr); when writing fails, say so once in the journal or in
    `home` (see clawd/core/logwriter.py) and carry on without the stream."""
    out = stream or sys.stderr
    # asyncpg's pool prints a multi-line traceback each time it fails to reconnect while
    # PostgreSQL is away; the sink already says so in one line (postgres_unavailable).
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    journal = _journal_attached(out)
    key_order = ["level", "event"] if journal else ["ts", "level", "event"]
    renderer: structlog.types.Processor = LogfmtRenderer(key_order)
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        mask_secrets,
    ]
    if journal:
        renderer = PriorityPrefix(renderer)  # journald stamps the time itself
    else:
        processors.append(_drop_priority)
        processors.insert(0, structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"))
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=SafeLoggerFactory(out, FailureReport(journal=journal, home=home)),
        cache_logger_on_first_use=False,
    )
