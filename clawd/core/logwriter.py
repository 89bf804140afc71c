"""Where log lines go: a write that fails never raises into the code that logged.

`clawd run 2>&1 | tee log` then Ctrl-C kills tee first; every later write to stderr raises
BrokenPipeError, and one raised inside the SIGTERM handler kept clawd from stopping.
Here a failed write is reported once by another way (the journal's socket when clawd runs
under journald, else a file in its home: the one place an operator who started it by hand
is sure to look, where syslog may not exist), and the line is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from clawd.core import logfmt
from clawd.core.journal import ERROR, JOURNAL_SOCKET, JournalSender

FAILURE_FILE = "log-output-failed.log"
# The reader is gone for good (pipe, terminal, journald stream): stop trying.
GONE = {errno.EPIPE, errno.ECONNRESET, errno.EIO, errno.EBADF, errno.ENXIO}


class FailureReport:
    """Says once, outside the broken stream, that log output failed."""

    def __init__(self, *, journal: bool, home: Path | None) -> None:
        self.journal = journal
        self.home = home

    def __call__(self, exc: BaseException, gone: bool) -> None:
        fields: dict[str, Any] = {
            "event": "log_output_failed",
            "error": str(exc) or type(exc).__name__,
            "note": (
                "the log's reader is gone; clawd keeps running and drops its log lines"
                if gone
                else "clawd keeps running; log lines are dropped until writing works again"
            ),
        }
        if self.journal and self._to_journal(fields):
            return
        if self.home is not None:
            self._to_file(self.home / FAILURE_FILE, fields)

    @staticmethod
    def _to_journal(fields: dict[str, Any]) -> bool:
        sender = JournalSender(os.environ.get("CLAW_JOURNAL_SOCKET", JOURNAL_SOCKET))
        try:
            message = logfmt.line([("level", "error"), *fields.items()])
            return sender.send(message, ERROR, fields)
        finally:
            sender.close()

    @staticmethod
    def _to_file(path: Path, fields: dict[str, Any]) -> None:
        ts = datetime.now(UTC).isoformat()
        text = logfmt.line([("ts", ts), ("level", "error"), *fields.items()]) + "\n"
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)


def _silence(stream: TextIO) -> None:
    """Point stdout/stderr at /dev/null when they are the broken file: nothing else that
    writes there (asyncio's error handler, the interpreter's final flush) fails either."""
    try:
        broken = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return
    to_devnull([fd for fd in (1, 2) if _same_file(fd, broken)])


def _same_file(fd: int, st: os.stat_result) -> bool:
    try:
        mine = os.fstat(fd)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


class SafeLogger:
    """structlog's PrintLogger, except that a failed write is dropped; the first is reported."""

    def __init__(self, stream: TextIO, report: Callable[[BaseException, bool], None]) -> None:
        self._stream = stream
        self._report = report
        self._lock = threading.Lock()  # lines written from worker threads stay whole
        self._reported = False
        self._gone = False

    def msg(self, message: str) -> None:
        with self._lock:
            if self._gone:
                return
            try:
                self._stream.write(message + "\n")
                self._stream.flush()
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        gone = not isinstance(exc, OSError) or exc.errno in GONE
        if gone:
            self._gone = True
            _silence(self._stream)
        if not self._reported:
            self._reported = True
            with contextlib.suppress(Exception):  # the report is best effort, never fatal
                self._report(exc, gone)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class SafeLoggerFactory:
    def __init__(self, stream: TextIO, report: Callable[[BaseException, bool], None]) -> None:
        self._logger = SafeLogger(stream, report)

    def __call__(self, *_args: Any) -> SafeLogger:
        return self._logger


def to_devnull(fds: list[int]) -> None:
    """Point `fds` (stdout, stderr) at /dev/null: later writes there succeed, unseen."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)
