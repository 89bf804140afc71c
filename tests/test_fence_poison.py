"""Issue 14 case 5: a peer's fence report cannot poison the fleet's fences.

A rogue peer answers the fence script with an absurd epoch; adopted, it would be written to
every legitimate peer's fence and fence every later leader out for good. Real parts: the
fence script in /bin/sh behind asyncssh servers on loopback (the rogue's fence file simply
holds the lie, so the real script tells it).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fleetops_helpers import document, machine, make_home
from sshpeers import SshFleet, SshPeer

from clawd.act.fleetops.distribution import ConfigDistributor, push_many, render_outcomes
from clawd.act.fleetops.fence import FenceToken
from clawd.act.fleetops.recovery import Recoverer
from clawd.act.fleetops.remote import PeerAddress, Reach
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging
from clawd.core.model import Instance, PeerState, PeerStatus
from clawd.core.observations import EpochSeen
from clawd.decide.election import epoch_seen
from clawd.decide.fencing import MAX_EPOCH_STEP, fence_refusal, retry_soon
from clawd.decide.view import Decision, FleetView, PeerRecord
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.factory import build_repository
from clawd.sources.ssh_client import Connector

FENCE = ".openclaw/.claw-clan-fence"
LIE = 999_999_999_999_999_999
ME = Instance("gw-a", "alpha", lead_number=1)


def _record(
    gid: str, *, verified: bool, ssh: SshPeer | None = None, installed: bool = True
) -> PeerRecord:
    state = PeerState(
        gid, status=PeerStatus.ONLINE, ssh_connectivity=True, claw_clan_installed=installed
    )
    where: dict[str, Any] = {} if ssh is None else {"ip": ssh.address, "ssh_port": ssh.port}
    return PeerRecord(
        Instance(gid, gid, lead_number=5, ssh_user="claw", **where), state, verified=verified
    )


def _view(epoch: int, **records: PeerRecord) -> FleetView:
    return FleetView(
        ME, {r.instance.gateway_id: r for r in records.values()}, ME.gateway_id, epoch=epoch
    )


def _hold(root: Path, epoch: int, lead: int, writer: str) -> None:
    """What the peer's fence file says (the rogue's: a lie the real script reports)."""
    (root / FENCE).mkdir(parents=True, exist_ok=True)
    (root / FENCE / "token").write_text(f"{epoch} {lead} {writer.encode().hex()}\n")


def _epoch_held(root: Path) -> int:
    return int((root / FENCE / "token").read_text().split()[0])


def _refusals(logs: io.StringIO) -> list[str]:
    return [ln for ln in logs.getvalue().splitlines() if "event=fence_report_refused" in ln]


# --------------------------------------------------------------------------- pure parts


def test_an_epoch_beyond_what_the_fleet_could_reach_is_refused() -> None:
    view = _view(3, b=_record("gw-b", verified=True))
    assert fence_refusal(view, 3 + MAX_EPOCH_STEP, "gw-b", "gw-b") is None
    assert fence_refusal(view, 4 + MAX_EPOCH_STEP, "gw-b", "gw-b") == "implausible_epoch"
    assert fence_refusal(view, LIE, "gw-a", "gw-b") == "implausible_epoch"  # even "from us"
    # The election ignores it too, whoever passes it on: our epoch stays ours.
    d = Decision(view)
    epoch_seen(d, EpochSeen(datetime.now(UTC), LIE, "gw-evil", 0, "gw-b"), datetime.now(UTC))
    assert d.view.epoch == 3 and not d.incidents


def test_reports_need_a_verified_reporter() -> None:
    view = _view(
        2,
        b=_record("gw-b", verified=True),
        c=_record("gw-c", verified=False),
    )
    assert fence_refusal(view, 7, "gw-c", "gw-c") == "unverified_reporter"
    assert fence_refusal(view, 7, "gw-b", "gw-nobody") == "unverified_reporter"
    assert fence_refusal(view, 7, "gw-usurper", "gw-b") is None  # a leader we cannot see
    # A known writer not verified in this run (a leader that died before it was proven)
    # is believed: refusing it would fence every later leader out.
    assert fence_refusal(view, 7, "gw-c", "gw-b") is None
    assert fence_refusal(view, 7, "gw-b", "gw-b") is None
    assert fence_refusal(view, 7, "gw-a", "gw-b") is None  # an earlier us wrote it
    # A reporter not proven yet (just after a restart): the next round, not a backoff.
    assert retry_soon(view, "unverified_reporter", "gw-c")
    assert not retry_soon(view, "implausible_epoch", "gw-c")
    d = Decision(view)
    epoch_seen(d, EpochSeen(datetime.now(UTC), 7, "gw-b", 0, "gw-b"), datetime.now(UTC))
    assert d.view.epoch == 8  # we lead: past the verified leader's epoch


# --------------------------------------------------------------------------- claim path


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


def _home(tmp_path: Path, fleet: SshFleet, **sections: Any) -> tuple[Settings, Path, Connector]:
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet, **sections)
    return settings, config_path, Connector(settings.ssh, home)


@contextlib.asynccontextmanager
async def _running(loop: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(loop.run(asyncio.Event()))
    try:
        yield
    finally:
        loop.stop()
        await task


async def _until(done: Callable[[], bool], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.05)


async def test_a_rogue_fence_epoch_is_refused_and_the_next_leader_still_pushes(
    tmp_path: Path, fleet: SshFleet
) -> None:
    rogue = await machine(fleet, tmp_path / "rogue", "127.0.42.9", installed=True)
    legit = [
        await machine(fleet, tmp_path / f"p{i}", f"127.0.42.{i}", installed=True) for i in (2, 3)
    ]
    _hold(tmp_path / "rogue", LIE, 0, "gw-evil")
    settings, config_path, connector = _home(tmp_path, fleet)
    logs = io.StringIO()
    configure_logging("debug", logs)
    # Every peer proved its id (the rogue too: a first-use key and a state.json of its
    # own); proving who you are does not make what you report true.
    view = _view(
        1,
        r=_record("gw-r", verified=True, ssh=rogue),
        p2=_record("gw-p2", verified=True, ssh=legit[0]),
        p3=_record("gw-p3", verified=True, ssh=legit[1]),
    )
    distributor = ConfigDistributor(settings, document(config_path), connector)

    def fenced(stored: FenceToken, *reported_by: str) -> None:
        # As the daemon does: the keeper's election takes the epoch, the loops its view.
        nonlocal view
        d = Decision(view)
        epoch_seen(
            d,
            EpochSeen(
                datetime.now(UTC), stored.epoch, stored.gateway_id, stored.lead_number, *reported_by
            ),
            datetime.now(UTC),
        )
        view = d.view
        distributor.update_view(view)

    distributor.on_fenced = fenced
    distributor.update_view(view)
    async with _running(distributor):
        # Both legitimate peers delivered, and the rogue asked again after its backoff.
        await _until(lambda: distributor.pushes >= 2 and rogue.authenticated >= 3)
        [again] = [o for o in await distributor.push_now(view) if o.gateway_id == "gw-r"]
    assert view.epoch == 1  # never adopted
    assert [_epoch_held(tmp_path / f"p{i}") for i in (2, 3)] == [1, 1]
    assert again.result == "failed" and "implausible_epoch" in again.detail
    [line] = _refusals(logs)  # once, however many retries
    assert "gateway=gw-r" in line and "reason=implausible_epoch" in line
    assert not (tmp_path / "rogue" / ".openclaw" / "claw-clan" / "config.json").exists()

    # gw-a is gone; gw-b leads in the next epoch and reaches every legitimate peer.
    nxt = FenceToken(view.epoch + 1, 2, "gw-b")
    peers = [
        PeerAddress(f"gw-p{i}", f"p{i}", p.address, p.port, "claw")
        for i, p in zip((2, 3), legit, strict=True)
    ]
    edited = {**document(config_path).data, "ping": {"intervalSeconds": 30}}  # its edit
    outcomes = await push_many(Reach(connector), peers, edited, settings, token=nxt)
    assert [o.result for o in outcomes] == ["pushed", "pushed"], outcomes
    assert "2 pushed" in render_outcomes(outcomes) and "fenced" not in render_outcomes(outcomes)


async def test_reinstall_believes_a_plausible_token_a_verified_peer_holds(
    tmp_path: Path, fleet: SshFleet
) -> None:
    bare = await machine(fleet, tmp_path / "bare", "127.0.43.2")
    settings, config_path, connector = _home(
        tmp_path, fleet, recovery={"retryInitialSeconds": 30, "retryMaxSeconds": 60}
    )
    repo = build_repository(settings)
    await repo.open()
    told: list[tuple[FenceToken, str]] = []
    recoverer = Recoverer(
        settings,
        document(config_path),
        connector,
        IncidentRecorder(repo),
        lambda _gid: None,
        on_fenced=lambda stored, by: told.append((stored, by)),
    )
    logs = io.StringIO()
    configure_logging("debug", logs)

    def view(c_verified: bool) -> FleetView:
        return _view(
            2,
            t=_record("gw-t", verified=True, ssh=bare, installed=False),
            c=_record("gw-c", verified=c_verified),
        )

    try:
        # gw-c, a leader not verified in this run (it died before we restarted, or it is
        # the other side of a split brain) wrote it, and the verified peer holds it:
        # believed at once, or it would fence us out for good.
        _hold(tmp_path / "bare", 5, 3, "gw-c")
        recoverer = Recoverer(
            settings,
            document(config_path),
            connector,
            IncidentRecorder(repo),
            lambda _gid: None,
            on_fenced=lambda stored, by: told.append((stored, by)),
        )
        recoverer.update_view(view(False))
        async with _running(recoverer):
            await _until(lambda: told != [], timeout=5)
        assert told[0] == (FenceToken(5, 3, "gw-c"), "gw-t")
    finally:
        await repo.flush()
        await repo.close()
    assert recoverer.reinstalls == 0
    assert not (tmp_path / "bare" / ".openclaw" / "claw-clan").exists()  # nothing copied
