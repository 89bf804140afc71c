"""Log lines: one event per line, key=value, secrets masked, journald priorities."""

from __future__ import annotations

import ast
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from clawd.core.logs import configure_logging


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


SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}
CLAWD = Path(__file__).resolve().parent.parent / "clawd"


def _names_in(node: ast.expr) -> Iterator[str]:
    """The event names an expression can give: a literal, or either branch of `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _names_in(node.body)
        yield from _names_in(node.orelse)


def logged_events() -> Iterator[tuple[str, str]]:
    """(file:line, event) for every `log.<level>(event, ...)` in clawd/, and every
    `*_event = "..."` attribute (events a base class logs through `self.x_event`)."""
    for path in sorted(CLAWD.rglob("*.py")):
        where = path.relative_to(CLAWD.parent)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
            ):
                for name in _names_in(node.args[0]):
                    yield f"{where}:{node.lineno}", name
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_event"):
                        yield f"{where}:{node.lineno}", str(node.value.value)


def test_every_event_name_is_snake_case() -> None:
    events = list(logged_events())
    assert len(events) > 50  # the scan sees clawd's log calls
    bad = [f"{where}: {name!r}" for where, name in events if not SNAKE_CASE.fullmatch(name)]
    assert not bad, "log event names must be snake_case:\n" + "\n".join(bad)
