"""The PostgreSQL spool on its own: order, torn lines, and where it resumes after a restart."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clawd.core.model import EventType, Incident, Ping
from clawd.keep.store.ops import PingBatch, WriteOp
from clawd.keep.store.spool import Spool

pytestmark = pytest.mark.usefixtures("no_blocking")

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _pings(n: int, start: int = 0) -> PingBatch:
    return PingBatch(
        tuple(
            Ping("gw-a", f"gw-{i % 7}", i % 3 != 0, T0, response_ms=i % 50)
            for i in range(start, start + n)
        )
    )


def _keys(ops: list[WriteOp]) -> list[object]:
    keys: list[object] = []
    for op in ops:
        if isinstance(op, PingBatch):
            keys.extend(p.key for p in op.pings)
        elif isinstance(op, Incident):
            keys.append(op.key)
    return keys


async def test_round_trip_keeps_order_and_content(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    written: list[WriteOp] = [
        _pings(3),
        Incident("gw-b", EventType.OFFLINE, {"why": "x"}, T0),
        _pings(2, 3),
    ]
    await spool.append(written)
    ops, end = await spool.read(max_rows=1000)
    assert _keys(ops) == _keys(written)
    assert ops[1] == written[1]
    assert ops[0] == written[0]
    assert end == spool.size
    assert stat.S_IMODE(spool.path.stat().st_mode) == 0o600


async def test_read_is_bounded_by_rows_and_resumes_after_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    batches: list[WriteOp] = [_pings(100, i * 100) for i in range(5)]
    await spool.append(batches)
    ops, end = await spool.read(max_rows=250)
    assert len(ops) == 3  # stops once the row budget is reached
    await spool.commit(end)

    reopened = Spool(tmp_path)  # as after a daemon restart
    await reopened.open()
    assert reopened.offset == end
    rest, rest_end = await reopened.read(max_rows=10_000)
    assert _keys(rest) == _keys(batches[3:])
    await reopened.commit(rest_end)
    assert reopened.pending_bytes == 0
    assert spool.path.stat().st_size == 0  # fully sent: truncated
    assert not reopened.offset_path.exists()


async def test_torn_last_line_is_not_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append([_pings(2)])
    with spool.path.open("ab") as fh:
        fh.write(b'{"t":"pings","rows":[["gw-a"')  # crash mid-append
    reopened = Spool(tmp_path)
    await reopened.open()
    ops, end = await reopened.read(max_rows=100)
    assert len(ops) == 1
    assert end < reopened.size  # the torn bytes stay unconsumed


async def test_unreadable_record_is_set_aside_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append([_pings(1)])
    with spool.path.open("ab") as fh:
        fh.write(b'{"t":"mystery"}\n')
    await spool.append([_pings(1, 1)])
    reopened = Spool(tmp_path)
    await reopened.open()
    ops, _ = await reopened.read(max_rows=100)
    assert len(ops) == 2
    assert reopened.rejected_path.read_bytes() == b'{"t":"mystery"}\n'


async def test_offset_beyond_file_replays_from_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append([_pings(2)])
    spool.offset_path.write_text("999999\n")
    reopened = Spool(tmp_path)
    await reopened.open()
    assert reopened.offset == 0  # replay; idempotency keys make it harmless
