"""`clawd status` from the store: one row per peer, leader marked, safe with hostile names."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from clawd.cli.main import main
from clawd.config.load import settings_from_data
from clawd.core.model import Instance, PeerState, PeerStatus, utcnow
from clawd.keep.store.factory import build_repository


async def _home(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"instance": {"gatewayId": "gw-a"}}))
    repo = build_repository(
        settings_from_data({"instance": {"gatewayId": "gw-a"}}, {}, config_dir=tmp_path)
    )
    await repo.open()
    now = utcnow()
    for gid, name, status in [
        ("gw-b", "beta", PeerStatus.ONLINE),
        ("gw-c", "evil\n\x1b[2Jname", PeerStatus.OFFLINE),
    ]:
        await repo.upsert_instance(Instance(gid, name, ip="127.0.0.2", lead_number=1))
        await repo.save_peer_state(
            PeerState(
                gid,
                status=status,
                last_seen=now,
                missed_pings=3,
                ssh_connectivity=status is PeerStatus.ONLINE,
                claw_clan_installed=True,
            )
        )
    await repo.set_leader("gw-b")
    return tmp_path


def test_table_lists_peers_and_marks_the_leader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = asyncio.run(_home(tmp_path))
    assert main(["status", "--config", str(home / "config.json")]) == 3  # no daemon runs
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.pop(0).startswith("clawd is not running (no answer on ")
    assert lines[0].split()[:3] == ["NAME", "IP", "STATUS"]
    beta = next(line for line in lines if line.startswith("beta"))
    assert "online" in beta and "(leader)" in beta and " yes " in beta
    assert lines[-1] == "leader: gw-b"
    assert "gw-a" not in "".join(lines[1:-1])  # self is not a peer
    assert "\x1b" not in out  # a peer's name cannot drive the terminal
    assert len(lines) == 4  # header, two peers, leader: a newline in a name adds no line


def test_json_for_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = asyncio.run(_home(tmp_path))
    assert main(["status", "--json", "--config", str(home / "config.json")]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["live"] is False and data["ageSeconds"] < 60
    assert data["leader"] == "gw-b"
    by_id = {p["gatewayId"]: p for p in data["peers"]}
    assert by_id["gw-c"]["status"] == "offline" and by_id["gw-c"]["missedPings"] == 3
    assert by_id["gw-c"]["name"] == "evil\n\x1b[2Jname"  # JSON keeps the real value
