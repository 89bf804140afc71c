"""Fault injection: random peer files (and fleet.json) never crash JsonStore.load.

Each example writes peers/<id>.json with JSON of random shape (a valid peer file with
random values at its real keys, or any JSON at all, or bytes that are not JSON) and loads
the store. Allowed outcomes: the peer is in the snapshot (the file was valid and is left
in place), or the file was moved aside as `<name>.corrupt-<ts>` and reported.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawd.keep.store.json_store import JsonStore

pytestmark = pytest.mark.timeout(120)

# Each example writes files, starts an event loop and loads the store (~4.5 ms): 10,000
# would take ~46 s alone and more under load, so this one runs 6,000 (~27 s).
STORE_FUZZ = settings(
    max_examples=6_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID_PEER: dict[str, Any] = {
    "gatewayId": "gw-x",
    "name": "x",
    "leadNumber": 3,
    "ip": "127.0.7.9",
    "sshUser": "claw",
    "sshPort": 22,
    "version": "0.1.0",
    "githubRepo": None,
    "registeredAt": "2026-11-23T12:00:00+00:00",
    "updatedAt": "2026-11-23T12:00:00+00:00",
    "status": "online",
    "lastSeen": "2026-11-23T12:00:00+00:00",
    "lastPingAttempt": None,
    "missedPings": 0,
    "sshConnectivity": True,
    "clawClanInstalled": False,
    "mdnsBroadcasting": False,
    "statusUpdatedAt": "2026-11-23T12:00:00+00:00",
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        ["gw-x", "online", "offline", "bogus", "", "2026-11-23T12:00:00", "2026-13-99T00:00:00Z",
         "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00-23:59", "2026-11-23T12:00:00+00:00",
         "../gw-x", "gw-x\x00", "ünï 🐙"]
    ),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def peer_file_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "any", "bytes", "torn"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "any":
        return json.dumps(draw(json_values)).encode()
    doc: dict[str, Any] = dict(VALID_PEER)
    for key in draw(st.lists(st.sampled_from([*VALID_PEER, "extra"]), max_size=4)):
        if draw(st.booleans()):
            doc[key] = draw(json_values)
        else:
            doc.pop(key, None)
    body = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    if kind == "torn":
        body = body[: draw(st.integers(0, len(body) - 1))]
    return body


@pytest.fixture(scope="module")
def fuzz_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("store-fuzz")


def _reset(home: Path) -> Path:
    shutil.rmtree(home, ignore_errors=True)
    (home / "peers").mkdir(parents=True)
    return home / "peers" / "gw-x.json"


@STORE_FUZZ
@given(body=peer_file_bodies(), fleet_body=st.one_of(st.none(), peer_file_bodies()))
def test_random_peer_files_load_or_are_moved_aside(
    fuzz_home: Path, body: bytes, fleet_body: bytes | None
) -> None:
    path = _reset(fuzz_home)
    path.write_bytes(body)
    if fleet_body is not None:  # a damaged fleet.json next to it
        (fuzz_home / "fleet.json").write_bytes(fleet_body)

    result = asyncio.run(JsonStore(fuzz_home).load())  # must not raise

    aside = sorted(p.name for p in path.parent.glob("gw-x.json.corrupt-*"))
    if "gw-x" in result.snapshot.peers:
        assert path.read_bytes() == body, "a valid peer file is left as it was"
        assert not aside and path not in result.quarantined
        state = result.snapshot.peers["gw-x"]
        assert state.gateway_id == "gw-x" and state.missed_pings >= 0
    else:
        assert not path.exists(), "an unreadable peer file is moved aside"
        assert len(aside) == 1 and (path.parent / aside[0]).read_bytes() == body
        assert [q.name for q in result.quarantined] == aside
    if fleet_body is not None:
        fleet = fuzz_home / "fleet.json"
        moved = list(fuzz_home.glob("fleet.json.corrupt-*"))
        assert fleet.exists() != bool(moved), "fleet.json is either kept or moved aside"
