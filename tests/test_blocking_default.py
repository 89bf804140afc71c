"""Blockbuster is on for every async test unless it opts out (conftest, tests/blocking.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from blockbuster import BlockingError

from clawd.core.atomic import write_atomic


async def test_a_blocking_clawd_call_on_the_loop_fails_an_async_test(tmp_path: Path) -> None:
    with pytest.raises(BlockingError):
        write_atomic(tmp_path / "x.json", b"{}")


@pytest.mark.blocking_allowed("checks that the opt-out marker turns blockbuster off")
async def test_the_marker_opts_out(tmp_path: Path) -> None:
    write_atomic(tmp_path / "x.json", b"{}")
    assert (tmp_path / "x.json").read_bytes() == b"{}"


def test_sync_tests_may_call_blocking_helpers(tmp_path: Path) -> None:
    write_atomic(tmp_path / "x.json", b"{}")
    assert (tmp_path / "x.json").read_bytes() == b"{}"
