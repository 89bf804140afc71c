"""Log lines: one event per line, key=value, secrets masked, journald priorities."""

from __future__ import annotations

import io
import os
import tempfile

import pytest
import structlog

from clawd.logs import configure_logging


def _emit(stream: io.TextIOBase) -> str:
    log = structlog.get_logger("t")
    log.warning(
        "postgres_unavailable", reason="refused", password="hunter2", dsn="postgres://u:p@h"
    )
    log.info("ready", backend="json")
    log.debug("noise")
    return stream.getvalue() if isinstance(stream, io.StringIO) else ""


def test_lines_are_logfmt_with_secrets_masked() -> None:
    out = io.StringIO()
    configure_logging("info", out)
    text = _emit(out)
    lines = text.splitlines()
    assert len(lines) == 2  # debug filtered at info
    assert lines[0].startswith("ts=") and "level=warning event=postgres_unavailable" in lines[0]
    assert "password=***" in lines[0] and "dsn=***" in lines[0]
    assert "hunter2" not in text and "u:p@h" not in text
    assert "level=info event=ready backend=json" in lines[1]


def test_journal_stream_gets_priority_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryFile("w+") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging("info", fh)  # type: ignore[arg-type]
        _emit(io.StringIO())
        fh.flush()
        fh.seek(0)
        lines = fh.read().splitlines()
    assert lines[0].startswith("<4>level=warning event=postgres_unavailable")
    assert lines[1].startswith("<6>level=info event=ready")
    assert not any("ts=" in line for line in lines)  # journald stamps its own time
