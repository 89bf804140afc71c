"""aiohttp's server log as clawd events: one line per kind of problem per interval.

Left alone, aiohttp logs a traceback for every malformed request, so any client could
fill the journal; a rejected request is the client's problem and worth a line a minute.
"""

from __future__ import annotations

import logging

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from clawd.core.ratelog import RateLimitedLog

log = structlog.get_logger("clawd.web")


class _ToClawdLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._limited = RateLimitedLog(log)

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self._limited.warning(
                "web_request_rejected", status=exc.code, reason=type(exc).__name__
            )
        elif exc is not None:
            self._limited.error("web_handler_failed", error=repr(exc))
        else:
            self._limited.warning("web_server_warning", message=record.getMessage())


def server_logger() -> logging.Logger:
    """A logger to give one server's aiohttp request handler (its `logger` argument).

    Its own instance, outside logging's tree: nothing reaches the root logger's
    traceback-printing default, and each server limits its own lines.
    """
    logger = logging.Logger("clawd.web.aiohttp", logging.WARNING)
    logger.addHandler(_ToClawdLog())
    return logger
