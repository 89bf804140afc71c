"""The fleet keeper end to end on the JSON store: observations in, files and incidents out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from blocking import setup_may_block

from clawd.config.load import settings_from_data
from clawd.config.settings import Settings
from clawd.core.model import EventType, Instance, PeerStatus, utcnow
from clawd.core.observations import PeerConfigured, PeerProof, PingResult
from clawd.core.trust import Trust
from clawd.decide.reconciler import Reconciler
from clawd.decide.suspicion import DetectorSettings
from clawd.decide.view import FleetView, Thresholds, initial_view
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.keeper import FleetKeeper, KeeperHooks, summary
from clawd.keep.store.factory import build_repository
from clawd.keep.store.json_store import JsonStore
from clawd.keep.store.repository import FleetRepository

ME = Instance("gw-a", "alpha", lead_number=5)


@dataclass
class Running:
    keeper: FleetKeeper
    repo: FleetRepository
    home: Path
    changes: list[FleetView]

    async def settle(self) -> None:
        """Wait until the keeper consumed everything queued so far (bounded)."""
        for _ in range(200):
            if self.keeper.queue.empty():
                await asyncio.sleep(0.02)
                if self.keeper.queue.empty():
                    return
            await asyncio.sleep(0.01)
        raise AssertionError("keeper did not drain its queue")

    def peer_file(self, gid: str) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.home / "peers" / f"{gid}.json").read_text())
        return data

    @setup_may_block
    def incidents(self) -> list[tuple[str, EventType]]:
        return [(i.gateway_id, i.event_type) for _, i in JsonStore(self.home).read_incidents()]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    repo = FleetRepository(JsonStore(tmp_path), ME)
    loaded = await repo.open()
    snap = loaded.snapshot
    view = initial_view(ME, snap.instances, snap.peers, snap.leader)
    changes: list[FleetView] = []
    keeper = FleetKeeper(
        repo,
        IncidentRecorder(repo),
        Reconciler(Thresholds(detector=DetectorSettings(kind="threshold", offline_after_missed=2))),
        view,
        persist_interval=3600,
        hooks=KeeperHooks(on_change=changes.append),
    )
    ready = asyncio.Event()
    task = asyncio.create_task(keeper.run(ready))
    await asyncio.wait_for(ready.wait(), 5)
    yield Running(keeper, repo, tmp_path, changes)
    keeper.stop()
    await asyncio.wait_for(task, 5)


def _ping(gid: str, ok: bool) -> PingResult:
    return PingResult(gid, utcnow(), ok, 4 if ok else None, tcp_reachable=False)


async def test_peer_goes_online_then_offline_in_files_and_incidents(running: Running) -> None:
    k = running.keeper
    k.emit(PeerConfigured(Instance("gw-b", "beta", ip="127.0.0.2", lead_number=9), utcnow()))
    k.emit(_ping("gw-b", True))
    await running.settle()
    assert running.peer_file("gw-b")["status"] == "online"
    k.emit(_ping("gw-b", False))
    k.emit(_ping("gw-b", False))
    await running.settle()
    peer = running.peer_file("gw-b")
    assert (peer["status"], peer["missedPings"]) == ("offline", 2)
    assert ("gw-b", EventType.ONLINE) in running.incidents()
    assert ("gw-b", EventType.OFFLINE) in running.incidents()
    assert summary(k.view) == "1 peer: 1 offline; leader gw-a"
    assert running.changes, "on_change was never called"
    assert json.loads((running.home / "fleet.json").read_text())["leader"] == "gw-a"


async def test_unchanged_pings_do_not_rewrite_the_peer_file(running: Running) -> None:
    k = running.keeper
    k.emit(PeerConfigured(Instance("gw-b", "beta", ip="127.0.0.2"), utcnow()))
    k.emit(_ping("gw-b", True))
    await running.settle()
    path = running.home / "peers" / "gw-b.json"
    first = path.stat().st_mtime_ns, path.read_text()
    for _ in range(20):
        k.emit(_ping("gw-b", True))
    await running.settle()
    assert (path.stat().st_mtime_ns, path.read_text()) == first
    # ...but the latest state is written when the keeper stops.
    k.stop()
    for _ in range(100):
        if path.read_text() != first[1]:
            break
        await asyncio.sleep(0.02)
    assert path.read_text() != first[1]


async def test_leader_change_is_persisted(running: Running) -> None:
    k = running.keeper
    k.emit(PeerConfigured(Instance("gw-b", "beta", ip="127.0.0.2", lead_number=1), utcnow()))
    # A round that read gw-b's own state.json over a trusted connection: it may lead.
    proof = PeerProof(Trust.KNOWN_HOSTS, "SHA256:test", "gw-b", 1)
    k.emit(dataclasses.replace(_ping("gw-b", True), proof=proof))
    await running.settle()
    assert k.view.leader == "gw-b"
    assert json.loads((running.home / "fleet.json").read_text())["leader"] == "gw-b"
    assert ("gw-b", EventType.LEADER_CHANGE) in running.incidents()
    assert k.view.peers["gw-b"].state.status is PeerStatus.ONLINE


async def test_claw_clan_vanishing_from_an_online_peer_is_a_change(running: Running) -> None:
    # Leader work (reinstall) listens to on_change: a peer that stays online but loses
    # claw-clan must reach it, while plain repeat pings must not.
    k = running.keeper
    k.emit(PeerConfigured(Instance("gw-b", "beta", ip="127.0.0.2"), utcnow()))
    k.emit(PingResult("gw-b", utcnow(), True, 3, installed=True))
    await running.settle()
    before = len(running.changes)
    for _ in range(5):
        k.emit(PingResult("gw-b", utcnow(), True, 3))
    await running.settle()
    assert len(running.changes) == before
    k.emit(PingResult("gw-b", utcnow(), True, 3, installed=False))
    await running.settle()
    assert len(running.changes) == before + 1
    assert not running.changes[-1].peers["gw-b"].state.claw_clan_installed


def _settings(home: Path, **extra: object) -> Settings:
    data = {
        "home": str(home),
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 5},
    } | extra
    return settings_from_data(data, environ={})


async def test_reconfigure_swaps_thresholds_and_takes_changes_as_observations(
    running: Running,
) -> None:
    # The keeper writes its own state on a reload: new thresholds and persist interval,
    # configured peers and this instance's new details as observations.
    k = running.keeper
    registered = k.view.me.registered_at
    new = _settings(
        running.home,
        instance={"gatewayId": "gw-a", "name": "renamed", "leadNumber": 7},
        peers=[{"name": "gw-c", "ip": "127.0.0.3"}],
        ping={"offlineAfterMissed": 9},
        storage={"peerFileIntervalSeconds": 5},
    )
    changed = frozenset({"instance", "peers", "ping", "storage"})
    await k.reconfigure(new, changed)
    await running.settle()
    assert k.reconciler.t.detector.offline_after_missed == 9
    assert k.peer_files.interval == 5
    assert "gw-c" in k.view.peers
    assert (k.view.me.name, k.view.me.lead_number) == ("renamed", 7)
    assert k.view.me.registered_at == registered  # registered once, not at each reload


async def test_repository_reconfigure_writes_this_instance_through_its_guarded_write(
    tmp_path: Path,
) -> None:
    repo = build_repository(_settings(tmp_path))
    await repo.open()
    registered = repo.me.registered_at
    await repo.reconfigure(
        _settings(tmp_path, instance={"gatewayId": "gw-a", "name": "renamed", "leadNumber": 7}),
        frozenset({"instance", "instance.name", "instance.leadNumber"}),
    )
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["name"] == "renamed" and state["leadNumber"] == 7
    assert repo.me.registered_at == registered
    assert repo.sink_state() == "off"
