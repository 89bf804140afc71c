"""Issue 12 item 5: a spool line that is valid JSON but not a record must not stop delivery.

Lines such as `1`, `[]`, `"x"` or `{"t":"peer","id":"x","v":[]}` in the PostgreSQL spool made
`decode_op` raise AttributeError at every start (a crash loop). Each one is now set aside like
a torn line: copied to pg-rejected.jsonl, reported once naming the spool file and line number,
and every good record around it is replayed into PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers_pg import (
    assert_keys_exactly_once,
    connect,
    make_incident,
    make_pings,
    make_settings,
    running_repo,
    wait_delivered,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgserver import PgDatabase

from clawd.keep.store.ops import PingBatch, WriteOp, decode_op, encode_op
from clawd.keep.store.spool import Spool

BAD_LINES = [
    b"1",
    b"[]",
    b'"x"',
    b'{"t":"peer","id":"x","v":[]}',
    b"null",
    b'{"t":"pings","rows":[1]}',
    b'{"t":"pings","rows":[["a","b",true,"2026-01-01T00:00:00+00:00",1,5]]}',
    b'{"t":"instance","v":"x"}',
    b'{"t":"incident","v":{"gatewayId":"g","eventType":"offline","key":7}}',
    b'{"t":["pings"]}',
    b"[" * 50_000 + b"]" * 50_000,  # nested too deeply for the JSON parser
]


async def test_bad_records_are_set_aside_and_every_good_record_is_replayed(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    spool = Spool(home / "spool")
    await spool.open()
    pings: list[Any] = []
    incidents: list[Any] = []
    bad_line_numbers: dict[int, bytes] = {}
    line = 0
    for bad in BAD_LINES:
        batch = make_pings(3)
        incident = make_incident("gw-a", line)
        good: list[WriteOp] = [PingBatch(tuple(batch)), incident]
        await spool.append(good)
        pings.extend(batch)
        incidents.append(incident)
        line += len(good)
        with spool.path.open("ab") as fh:
            fh.write(bad + b"\n")
        line += 1
        bad_line_numbers[line] = bad
    tail = make_pings(2)
    await spool.append([PingBatch(tuple(tail))])
    pings.extend(tail)

    with structlog.testing.capture_logs() as logs:
        async with running_repo(make_settings(pg_db, home)) as repo:
            await wait_delivered(repo)
    async with connect(pg_db) as conn:
        await assert_keys_exactly_once(conn, "ping_history", [p.key for p in pings])
        await assert_keys_exactly_once(conn, "incident_log", [i.key for i in incidents])

    reported = [e for e in logs if e["event"] == "spool_record_unreadable"]
    assert len(reported) == len(BAD_LINES), reported
    where = [str(e["path"]) for e in reported]
    assert where == [f"{spool.path}:{n}" for n in bad_line_numbers], where
    assert all(e["log_level"] == "error" and e.get("kept_in") for e in reported)
    kept = spool.rejected_path.read_bytes().split(b"\n")[:-1]
    assert kept == BAD_LINES
    assert spool.path.stat().st_size == 0  # all consumed

    # Started again: nothing left to replay, nothing reported twice.
    with structlog.testing.capture_logs() as again:
        async with running_repo(make_settings(pg_db, home)) as repo:
            await wait_delivered(repo)
    assert not [e for e in again if e["event"] == "spool_record_unreadable"]


@pytest.mark.usefixtures("no_blocking")
async def test_a_bad_line_is_reported_once_when_the_read_is_repeated(tmp_path: Path) -> None:
    """A send that fails makes the sink read the same lines again: still one report."""
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append([PingBatch(tuple(make_pings(1)))])
    with spool.path.open("ab") as fh:
        fh.write(b"[]\n")
    await spool.append([PingBatch(tuple(make_pings(1)))])
    reopened = Spool(tmp_path)
    await reopened.open()
    with structlog.testing.capture_logs() as logs:
        first, end = await reopened.read(max_rows=100)
        second, end2 = await reopened.read(max_rows=100)
    assert len(first) == len(second) == 2 and end == end2 == reopened.size
    assert [e["path"] for e in logs if e["event"] == "spool_record_unreadable"] == [
        f"{reopened.path}:2"
    ]
    assert reopened.rejected_path.read_bytes() == b"[]\n"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)

_VALID = [
    encode_op(PingBatch(tuple(make_pings(2)))),
    encode_op(make_incident("gw-a", 1)),
]


def _replace_at(value: Any, path: list[int], new: Any) -> Any:
    """`value` with the node picked by `path` (indexes into dict items / list items) replaced."""
    if not path or not isinstance(value, dict | list) or not value:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        keys = list(value)
        key = keys[head % len(keys)]
        return {**value, key: _replace_at(value[key], rest, new)}
    i = head % len(value)
    return [*value[:i], _replace_at(value[i], rest, new), *value[i + 1 :]]


def _decodes_or_value_error(obj: Any) -> None:
    # ValueError is the one error a caller has to expect: the spool sets the line aside.
    with contextlib.suppress(ValueError):
        decode_op(json.loads(json.dumps(obj)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_value_decodes_or_raises_value_error(value: Any) -> None:
    _decodes_or_value_error(value)
    _decodes_or_value_error({"t": "peer", "id": "x", "v": value})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID), st.lists(st.integers(0, 20), max_size=5), JSON)
def test_a_damaged_record_decodes_or_raises_value_error(
    record: dict[str, Any], path: list[int], new: Any
) -> None:
    _decodes_or_value_error(_replace_at(record, path, new))


@pytest.mark.parametrize("bad", [b"1", b'{"t":"peer","id":"x","v":[]}'])
def test_decode_error_names_what_is_wrong(bad: bytes) -> None:
    with pytest.raises(ValueError, match=re.compile("expected a JSON object")):
        decode_op(json.loads(bad))
