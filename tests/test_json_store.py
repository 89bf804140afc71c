"""The JSON store: the seed's layout and keys, atomic writes, malformed files set aside."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from clawd.config.load import settings_from_data
from clawd.core.model import EventType, Incident, Instance, PeerState, PeerStatus, utcnow
from clawd.keep.store.factory import build_repository
from clawd.keep.store.json_store import JsonStore

pytestmark = pytest.mark.usefixtures("no_blocking")


def _peer(gid: str, ip: str, status: PeerStatus) -> tuple[Instance, PeerState]:
    now = utcnow()
    inst = Instance(gateway_id=gid, name=f"name-{gid}", ip=ip, ssh_user="claw", lead_number=3)
    return inst, PeerState(gateway_id=gid, status=status, last_seen=now, missed_pings=0)


async def test_peer_file_has_the_keys_the_seed_reads(tmp_path: Path) -> None:
    store = JsonStore(tmp_path)
    await store.load()
    inst, state = _peer("gw-b", "10.0.0.12", PeerStatus.ONLINE)
    await store.write_peer(inst, state)
    path = tmp_path / "peers" / "gw-b.json"
    data = json.loads(path.read_text())
    assert data["name"] == "name-gw-b"
    assert data["ip"] == "10.0.0.12"
    assert data["sshUser"] == "claw"
    assert data["status"] == "online"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_seed_shell_loop_finds_online_peers(tmp_path: Path) -> None:
    """The seed's config-distribution loop (bash + jq) works on our files unchanged."""
    repo = build_repository(
        settings_from_data(
            {"instance": {"gatewayId": "me", "sshUser": "alice"}}, {}, config_dir=tmp_path
        )
    )
    await repo.open()
    for gid, ip, status in [
        ("gw-b", "127.0.0.2", PeerStatus.ONLINE),
        ("gw-c", "127.0.0.3", PeerStatus.OFFLINE),
        ("gw-d", "127.0.0.4", PeerStatus.ONLINE),
    ]:
        inst, state = _peer(gid, ip, status)
        await repo.upsert_instance(inst)
        await repo.save_peer_state(state)
    script = r"""
    H="$1"
    MY_USER=$(jq -r '.sshUser' "$H/state.json")
    for peer_file in "$H"/peers/*.json; do
      [[ -f "$peer_file" ]] || continue
      peer_status=$(jq -r '.status' "$peer_file")
      [[ "$peer_status" == "online" ]] || continue
      peer_ip=$(jq -r '.ip' "$peer_file")
      peer_user=$(jq -r '.sshUser // "'"$MY_USER"'"' "$peer_file")
      peer_name=$(jq -r '.name // "unknown"' "$peer_file")
      echo "${peer_name} ${peer_user}@${peer_ip} me=${MY_USER}"
    done
    """
    out = await asyncio.create_subprocess_exec(
        "bash", "-c", script, "seed", str(tmp_path), stdout=subprocess.PIPE
    )
    stdout, _ = await out.communicate()
    assert stdout.decode().splitlines() == [
        "name-gw-b claw@127.0.0.2 me=alice",
        "name-gw-d claw@127.0.0.4 me=alice",
    ]


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    store = JsonStore(tmp_path)
    await store.load()
    inst, state = _peer("gw-b", "10.0.0.12", PeerStatus.UNRESPONSIVE)
    state.missed_pings = 2
    await store.write_peer(inst, state)
    await store.write_fleet([inst], leader="gw-b")
    loaded = (await JsonStore(tmp_path).load()).snapshot
    assert loaded.peers["gw-b"].status is PeerStatus.UNRESPONSIVE
    assert loaded.peers["gw-b"].missed_pings == 2
    assert loaded.peers["gw-b"].last_seen == state.last_seen
    assert loaded.instances["gw-b"].ip == "10.0.0.12"
    assert loaded.leader == "gw-b"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"gatewayId": "gw-x", "name": ', "Expecting value"),
        (b"\xff\xfe not utf-8", "Expecting value"),
        (b'["a list"]', "expected a JSON object"),
        (
            b'{"gatewayId": "gw-x", "status": "sleeping",'
            b' "registeredAt": "2026-01-01T00:00:00+00:00",'
            b' "updatedAt": "2026-01-01T00:00:00+00:00"}',
            "'sleeping' is not one of",
        ),
        (
            b'{"gatewayId": "gw-other", "registeredAt": "2026-01-01T00:00:00+00:00",'
            b' "updatedAt": "2026-01-01T00:00:00+00:00"}',
            "does not match the file name",
        ),
        (  # found by hypothesis: PostgreSQL would refuse it much later
            b'{"gatewayId": "gw-x", "missedPings": -1,'
            b' "registeredAt": "2026-01-01T00:00:00+00:00",'
            b' "updatedAt": "2026-01-01T00:00:00+00:00"}',
            "missedPings: -1 is outside",
        ),
        (
            b'{"gatewayId": "gw-x", "sshPort": 70000,'
            b' "registeredAt": "2026-01-01T00:00:00+00:00",'
            b' "updatedAt": "2026-01-01T00:00:00+00:00"}',
            "sshPort: 70000 is outside 1..65535",
        ),
    ],
)
async def test_malformed_peer_file_is_set_aside_not_fatal(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    store = JsonStore(tmp_path)
    await store.load()
    inst, state = _peer("gw-good", "10.0.0.2", PeerStatus.ONLINE)
    await store.write_peer(inst, state)
    bad = tmp_path / "peers" / "gw-x.json"
    bad.write_bytes(content)

    with capture_logs() as logs:
        result = await JsonStore(tmp_path).load()

    assert "gw-good" in result.snapshot.peers  # the rest still loads
    assert "gw-x" not in result.snapshot.peers
    assert not bad.exists()
    (moved,) = result.quarantined
    assert moved.name.startswith("gw-x.json.corrupt-")
    assert moved.read_bytes() == content  # kept, never silently dropped
    (event,) = [e for e in logs if e["event"] == "peer_file_quarantined"]
    assert event["path"] == str(bad)
    assert reason in event["reason"]
    assert event["log_level"] == "warning"


async def test_concurrent_writes_to_one_peer_end_with_the_last(tmp_path: Path) -> None:
    store = JsonStore(tmp_path)
    await store.load()
    inst, _ = _peer("gw-b", "10.0.0.2", PeerStatus.ONLINE)
    states = [PeerState(gateway_id="gw-b", missed_pings=i) for i in range(60)]
    await asyncio.gather(*(store.write_peer(inst, s) for s in states))
    data = json.loads((tmp_path / "peers" / "gw-b.json").read_text())
    assert data["missedPings"] == 59
    assert [p.name for p in (tmp_path / "peers").iterdir()] == ["gw-b.json"]  # no temp files


async def test_stale_temp_files_are_cleaned_at_start(tmp_path: Path) -> None:
    (tmp_path / "peers").mkdir(parents=True)
    stale = tmp_path / "peers" / ".gw-b.json.abc123.tmp"
    stale.write_text('{"half":')
    await JsonStore(tmp_path).load()
    assert not stale.exists()


async def test_incidents_are_kept_in_order_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    store = JsonStore(tmp_path)
    await store.load()
    start = utcnow()
    written = [
        Incident(
            gateway_id="gw-b",
            event_type=EventType.OFFLINE,
            details={"missed_pings": 3},
            timestamp=start + timedelta(seconds=i),
        )
        for i in range(5)
    ]
    for incident in written:
        await store.append_incident(incident)
    with (tmp_path / "incidents.jsonl").open("ab") as fh:
        fh.write(b'{"key": "torn')  # a crash mid-append
    read = [i for _, i in await asyncio.to_thread(lambda: list(store.read_incidents()))]
    assert [i.key for i in read] == [i.key for i in written]
    assert read[0].details == {"missed_pings": 3}
    since = start + timedelta(seconds=3)
    recent = await asyncio.to_thread(lambda: list(store.read_incidents(since=since)))
    assert [i.key for _, i in recent] == [written[3].key, written[4].key]


async def test_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    repo = build_repository(settings_from_data({}, {}, config_dir=home))
    await repo.open()
    inst, state = _peer("gw-b", "10.0.0.2", PeerStatus.ONLINE)
    await repo.upsert_instance(inst)
    await repo.save_peer_state(state)
    await repo.record_incident(Incident(gateway_id="gw-b", event_type=EventType.ONLINE))
    for path in [
        home / "state.json",
        home / "fleet.json",
        home / "peers" / "gw-b.json",
        home / "incidents.jsonl",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((home / "peers").stat().st_mode) == 0o700
    assert home.stat().st_mode & 0o077 == 0


async def test_a_reader_never_touches_a_write_in_progress_or_a_bad_file(tmp_path: Path) -> None:
    # `clawd status` reads while the daemon writes: a temp file about to be renamed
    # into place, and a malformed peer file, must both be left where they are.
    peers = tmp_path / "peers"
    peers.mkdir()
    in_flight = peers / ".gw-b.json.1234.tmp"
    in_flight.write_text("{half")
    bad = peers / "gw-c.json"
    bad.write_text("{not json")
    loaded = await JsonStore(tmp_path).load(read_only=True)
    assert loaded.snapshot.peers == {} and loaded.quarantined == []
    assert in_flight.exists() and bad.exists()
    # The daemon's own load repairs: the bad file is moved aside.
    repaired = await JsonStore(tmp_path).load()
    assert not bad.exists() and len(repaired.quarantined) == 1
    assert not in_flight.exists()  # at the daemon's start, a temp file is a crash's leftover
