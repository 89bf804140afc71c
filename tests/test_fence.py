"""The peer-side fence: its script against a real /bin/sh behind a real SSH server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fleetops_helpers import document, machine, make_home
from sshpeers import SshFleet, SshPeer

from clawd.act.fleetops.distribution import ConfigDistributor, push_many, render_outcomes
from clawd.act.fleetops.fence import (
    FenceError,
    FenceKind,
    FenceResult,
    FenceToken,
    claim,
    fence_dir,
    parse_answer,
    token_for,
)
from clawd.act.fleetops.payload import read_config
from clawd.act.fleetops.recovery import Recoverer
from clawd.act.fleetops.remote import PeerAddress, Reach, RemoteHost
from clawd.config.settings import Settings
from clawd.core.model import Instance, PeerState, PeerStatus
from clawd.core.trust import Trust
from clawd.decide.view import FleetView, PeerRecord
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.factory import build_repository
from clawd.sources.ssh_client import Connector

FENCE = ".openclaw/.claw-clan-fence"


@dataclass
class Peer:
    """One SSH peer with a real home (`root`) and what it takes to reach it."""

    root: Path
    ssh: SshPeer
    settings: Settings
    config_path: Path
    connector: Connector

    @property
    def address(self) -> PeerAddress:
        return PeerAddress("gw-t", "target", self.ssh.address, self.ssh.port, "claw")

    def host(self) -> RemoteHost:
        return RemoteHost(self.connector, self.address)

    async def claim(
        self, token: FenceToken, *, reinstall: bool = False, directory: str = FENCE
    ) -> FenceResult:
        async with self.host() as host:
            return await claim(host, directory, token, reinstall=reinstall, seconds=10)

    def stored(self) -> str:
        return (self.root / FENCE / "token").read_text()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


@pytest.fixture
async def peer(tmp_path: Path, fleet: SshFleet) -> Peer:
    root = tmp_path / "peer"
    ssh = await machine(fleet, root, "127.0.41.2")
    home = tmp_path / "home"
    home.mkdir()
    settings, config_path = make_home(home, fleet)
    return Peer(root, ssh, settings, config_path, Connector(settings.ssh, home))


def _t(epoch: int, lead: int, gid: str) -> FenceToken:
    return FenceToken(epoch, lead, gid)


# --------------------------------------------------------------------------- pure parts


def test_rank_higher_epoch_then_lower_lead_then_lower_gateway_wins() -> None:
    tokens = [_t(1, 5, "b"), _t(2, 9, "z"), _t(2, 3, "b"), _t(2, 3, "a"), _t(0, 0, "a")]
    ranked = sorted(tokens, key=FenceToken.rank_key)
    assert ranked == [_t(2, 3, "a"), _t(2, 3, "b"), _t(2, 9, "z"), _t(1, 5, "b"), _t(0, 0, "a")]
    assert _t(2, 9, "z").outranks(_t(1, 0, "a"))
    assert not _t(1, 1, "a").outranks(_t(1, 1, "a"))
    me = Instance("gw-me", "me", lead_number=None)
    assert token_for(FleetView(me, epoch=4)).lead_number > 10**17  # unranked: the weakest
    with pytest.raises(ValueError):
        FenceToken(-1, 0, "a")
    with pytest.raises(ValueError):
        FenceToken(0, 0, "")


def test_fence_dir_is_beside_the_home_never_inside() -> None:
    assert fence_dir(".openclaw/claw-clan") == FENCE
    assert fence_dir(".openclaw/claw-clan/") == FENCE
    assert fence_dir("~/.openclaw/claw-clan") == "~/" + FENCE
    assert fence_dir("/opt/claw") == "/opt/.claw-fence"
    assert fence_dir("claw-clan") == ".claw-clan-fence"
    for bad in ("~", "/", "."):
        with pytest.raises(FenceError):
            fence_dir(bad)


def test_answers_other_than_the_protocol_are_errors() -> None:
    gw = b"gw-a".hex()
    noise = "Welcome to the peer!\n"
    assert parse_answer(f"{noise}clawd-fence accepted none\n") == FenceResult(FenceKind.ACCEPTED)
    stale = parse_answer(f"clawd-fence stale 3:1:{gw}\n")
    assert stale == FenceResult(FenceKind.STALE, _t(3, 1, "gw-a"))
    already = parse_answer(f"clawd-fence already garbage {gw}")
    assert already == FenceResult(FenceKind.ALREADY, None, garbage=True, owner="gw-a")
    for bad in (
        "",
        "accepted",
        "clawd-fence maybe none",
        "clawd-fence stale none",  # a refusal must say by whom
        "clawd-fence stale 3:1:zz",
        f"clawd-fence stale 3:1:{gw} extra",
        "clawd-fence already none",
        "clawd-fence accepted 1:2:abc",  # odd hex
        "clawd-fence busy",
    ):
        with pytest.raises(FenceError) as info:
            parse_answer(bad)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- on a real peer


async def test_claims_keep_the_strongest_token(peer: Peer) -> None:
    first = await peer.claim(_t(0, 2, "gw-b"))
    assert first == FenceResult(FenceKind.ACCEPTED)
    assert peer.stored() == f"0 2 {b'gw-b'.hex()}\n"
    # The same claimant again: accepted, nothing changes.
    assert (await peer.claim(_t(0, 2, "gw-b"))).kind is FenceKind.ACCEPTED
    # Same epoch, worse rank (higher lead number; same lead, higher gateway id): stale.
    for weaker in (_t(0, 3, "gw-a"), _t(0, 2, "gw-c")):
        refused = await peer.claim(weaker, reinstall=True)
        assert refused == FenceResult(FenceKind.STALE, _t(0, 2, "gw-b"))
    assert not (peer.root / FENCE / "reinstall-0").exists()  # a refusal takes no marker
    # Same epoch, better rank: accepted and stored.
    assert (await peer.claim(_t(0, 1, "gw-z"))).stored == _t(0, 2, "gw-b")
    # A higher epoch wins whatever its lead number; the old leader is then stale.
    assert (await peer.claim(_t(1, 50, "gw-c"))).kind is FenceKind.ACCEPTED
    old = await peer.claim(_t(0, 1, "gw-z"))
    assert old.kind is FenceKind.STALE and old.stored == _t(1, 50, "gw-c")
    assert peer.stored() == f"1 50 {b'gw-c'.hex()}\n"
    assert sorted(p.name for p in (peer.root / FENCE).iterdir()) == ["token"]  # no lock left


async def test_one_reinstall_owner_per_epoch(peer: Peer) -> None:
    assert (await peer.claim(_t(0, 2, "gw-b"), reinstall=True)).kind is FenceKind.ACCEPTED
    # The owner may try again (its own install failed, or the peer lost it again).
    assert (await peer.claim(_t(0, 2, "gw-b"), reinstall=True)).kind is FenceKind.ACCEPTED
    # A better-ranked leader of the same epoch (split brain): its token is taken, but
    # the reinstall of this epoch is done.
    again = await peer.claim(_t(0, 1, "gw-a"), reinstall=True)
    assert again.kind is FenceKind.ALREADY and again.owner == "gw-b"
    assert peer.stored().startswith("0 1 ")
    # A config push (no reinstall) is not affected by the marker.
    assert (await peer.claim(_t(0, 1, "gw-a"))).kind is FenceKind.ACCEPTED
    # A new epoch has a reinstall of its own; older markers are cleared.
    assert (await peer.claim(_t(1, 1, "gw-a"), reinstall=True)).kind is FenceKind.ACCEPTED
    markers = sorted(p.name for p in (peer.root / FENCE).glob("reinstall-*"))
    assert markers == ["reinstall-1"]


async def test_concurrent_claims_in_one_epoch_give_exactly_one_reinstall(peer: Peer) -> None:
    tokens = [_t(0, lead, f"gw-{n}") for n, lead in enumerate((5, 3, 3, 7, 1, 1, 4, 9))]
    for round_ in range(2):
        # Round 1: a fresh peer. Round 2: a new epoch over the left-overs of round 1.
        epoch_tokens = [FenceToken(round_, t.lead_number, t.gateway_id) for t in tokens]
        async with contextlib.AsyncExitStack() as stack:
            # Connected first, so the claims themselves start together.
            hosts = [await stack.enter_async_context(peer.host()) for _ in epoch_tokens]
            results = await asyncio.gather(
                *(
                    claim(host, FENCE, token, reinstall=True, seconds=10)
                    for host, token in zip(hosts, epoch_tokens, strict=True)
                )
            )
        kinds = [r.kind for r in results]
        assert kinds.count(FenceKind.ACCEPTED) == 1, kinds
        assert kinds.count(FenceKind.ALREADY) + kinds.count(FenceKind.STALE) == 7
        winner = epoch_tokens[kinds.index(FenceKind.ACCEPTED)]
        marker = peer.root / FENCE / f"reinstall-{round_}"
        assert (marker / "owner").read_text() == winner.gateway_hex() + "\n"
        assert [p.name for p in (peer.root / FENCE).glob("reinstall-*")] == [marker.name]
        for result in results:
            if result.kind is FenceKind.ALREADY:
                assert result.owner == winner.gateway_id
        # No claim lost: whatever the order, the strongest token ends up stored.
        strongest = min(epoch_tokens, key=FenceToken.rank_key)
        assert peer.stored() == strongest.line() + "\n"
        names = sorted(p.name for p in (peer.root / FENCE).iterdir())
        assert names == [marker.name, "token"]  # no lock, no temp file left


async def test_garbage_token_file_counts_as_no_token(peer: Peer) -> None:
    (peer.root / FENCE).mkdir(parents=True)
    token_file = peer.root / FENCE / "token"
    for garbage in (
        b"",
        b"hello",
        b"1 2",
        b"1 2 zz",
        b"1 2 abc",
        b"1 2 ab extra",
        b"99999999999999999999 1 ab",
        b"-1 2 ab",
        b"\x00\xff\n",
        b"* * *",
    ):
        token_file.write_bytes(garbage)
        result = await peer.claim(_t(0, 9, "gw-x"))
        assert result.kind is FenceKind.ACCEPTED and result.garbage, garbage
        assert peer.stored() == f"0 9 {b'gw-x'.hex()}\n"


async def test_the_fence_never_makes_a_bare_peer_look_installed(peer: Peer) -> None:
    check = peer.settings.ssh.install_check_command
    assert check == "test -d ~/.openclaw/claw-clan"
    directory = fence_dir(peer.settings.recovery.remote_home)
    assert (await peer.claim(_t(0, 1, "gw-a"), reinstall=True, directory=directory)).kind is (
        FenceKind.ACCEPTED
    )
    # `~` means the login's home on the peer, as in the install check.
    tilde = fence_dir("~/" + peer.settings.recovery.remote_home)
    assert (await peer.claim(_t(0, 1, "gw-a"), directory=tilde)).kind is FenceKind.ACCEPTED
    assert (peer.root / FENCE / "reinstall-0").is_dir()
    assert not (peer.root / ".openclaw" / "claw-clan").exists()
    async with peer.host() as host:
        assert not (await host.run(check, 10)).ok


async def test_hostile_gateway_ids_and_paths_stay_data(peer: Peer, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    hostile = [
        f"'; touch {pwned}; '",
        f'"; touch {pwned}; "',
        f"$(touch {pwned})",
        f"`touch {pwned}`",
        f"a\nb; touch {pwned}",
        "ünïcødé ☃",
        "a b c",
    ]
    for n, gid in enumerate(hostile):
        result = await peer.claim(_t(n, 1, gid), reinstall=True)
        assert result.kind is FenceKind.ACCEPTED
        # A weaker claimant is told who holds the peer: the id comes back intact.
        refused = await peer.claim(_t(n, 2, "gw-weak"))
        assert refused.kind is FenceKind.STALE and refused.stored == _t(n, 1, gid)
        assert (peer.root / FENCE / f"reinstall-{n}" / "owner").read_text() == (
            gid.encode().hex() + "\n"
        )
    # A path with quotes, spaces and substitutions is a path, nothing more.
    odd = f"odd dir/'$(touch {pwned})'\"`x`\"/.fence"
    assert (await peer.claim(_t(0, 1, "gw-a"), directory=odd)).kind is FenceKind.ACCEPTED
    assert (peer.root / odd / "token").is_file()
    assert not pwned.exists()


async def test_a_dead_holders_lock_is_broken_a_live_one_is_waited_for(peer: Peer) -> None:
    lock = peer.root / FENCE / "lock"
    lock.mkdir(parents=True)
    (lock / "t").write_text(f"{int(time.time()) - 60}\n")  # held by a script that died
    assert (await peer.claim(_t(0, 1, "gw-a"))).kind is FenceKind.ACCEPTED
    assert not lock.exists()
    lock.mkdir()
    (lock / "t").write_text(f"{int(time.time())}\n")  # held right now
    started = time.monotonic()
    async with peer.host() as host:
        with pytest.raises(FenceError, match="stayed locked"):
            await claim(host, FENCE, _t(0, 1, "gw-a"), reinstall=False, seconds=2)
    # Bounded by the claim's 2 s budget (an SSH exec on a busy machine on top).
    assert time.monotonic() - started < 8
    assert lock.is_dir()  # not ours to remove


async def test_a_claim_that_cannot_write_is_an_error(peer: Peer) -> None:
    (peer.root / ".openclaw").mkdir()
    (peer.root / FENCE).write_text("a file where the folder should be")
    with pytest.raises(FenceError, match="exit") as info:
        await peer.claim(_t(0, 1, "gw-a"))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- leader work


def _view(me: Instance, peer: Peer, epoch: int, installed: bool = False) -> FleetView:
    state = PeerState(
        "gw-t", status=PeerStatus.ONLINE, ssh_connectivity=True, claw_clan_installed=installed
    )
    target = Instance(
        "gw-t", "target", ip=peer.ssh.address, ssh_port=peer.ssh.port, ssh_user="claw"
    )
    # gw-t proved itself over SSH; gw-new (the other leader) is known, down from here.
    other = PeerRecord(Instance("gw-new", "new", lead_number=7), PeerState("gw-new"))
    records = {
        "gw-t": PeerRecord(target, state, verified=True, trust=Trust.KNOWN_HOSTS),
        "gw-new": other,
    }
    return FleetView(me, records, me.gateway_id, epoch=epoch)


@contextlib.asynccontextmanager
async def _running(loop: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(loop.run(asyncio.Event()))
    try:
        yield
    finally:
        loop.stop()
        await task


async def _until(done: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.05)


async def test_stale_or_second_leader_does_not_reinstall(peer: Peer, tmp_path: Path) -> None:
    repo = build_repository(peer.settings)
    await repo.open()
    fenced: list[FenceToken] = []
    rechecked: list[str] = []
    recoverer = Recoverer(
        peer.settings,
        document(peer.config_path),
        peer.connector,
        IncidentRecorder(repo),
        rechecked.append,
        on_fenced=lambda stored, _by: fenced.append(stored),
    )
    me = Instance("gw-b", "beta", lead_number=2)
    # A leader of a later epoch has claimed the peer: we are stale.
    await peer.claim(_t(3, 7, "gw-new"))
    recoverer.update_view(_view(me, peer, epoch=2))
    try:
        async with _running(recoverer):
            await _until(lambda: len(fenced) >= 2)  # backs off, then asks again
            assert set(fenced) == {_t(3, 7, "gw-new")}
            assert rechecked == [] and recoverer.reinstalls == 0
            # Our epoch now, but its reinstall is another leader's: hold as after a success.
            (peer.root / FENCE / "reinstall-3").mkdir()
            (peer.root / FENCE / "reinstall-3" / "owner").write_text(b"gw-new".hex() + "\n")
            recoverer.update_view(_view(me, peer, epoch=3))
            await _until(lambda: rechecked == ["gw-t"])
            await asyncio.sleep(0.2)  # held: no new attempt right away
    finally:
        await repo.flush()
        await repo.close()
    assert rechecked == ["gw-t"] and recoverer.reinstalls == 0
    assert len(fenced) <= 4  # backed off, not a tight loop
    assert not (peer.root / "install-runs").exists()
    assert not (peer.root / ".openclaw" / "claw-clan").exists()  # nothing copied
    incidents = tmp_path / "home" / "incidents.jsonl"
    assert "reinstall" not in (incidents.read_text() if incidents.exists() else "")


async def test_push_to_a_peer_fenced_by_another_leader(peer: Peer) -> None:
    (peer.root / ".openclaw" / "claw-clan").mkdir(parents=True)  # claw-clan is installed
    ours, _ = await asyncio.to_thread(read_config, peer.config_path)
    target = peer.address
    # A user's push without a daemon claims at epoch 0 with our lead number (1).
    [first] = await push_many(Reach(peer.connector), [target], ours, peer.settings)
    assert first.result == "pushed"
    config = peer.root / ".openclaw" / "claw-clan" / "config.json"
    delivered = config.read_bytes()
    await peer.claim(_t(1, 5, "gw-new"))  # a later epoch's leader took over
    ours["ping"] = {"intervalSeconds": 30}
    peer.config_path.write_text(json.dumps(ours))  # for the distributor below
    [second] = await push_many(Reach(peer.connector), [target], ours, peer.settings)
    assert second.result == "fenced" and second.fenced_by == _t(1, 5, "gw-new")
    assert "another leader" in second.detail and "gw-new" in second.detail
    assert config.read_bytes() == delivered  # nothing written
    table = render_outcomes([first, second])
    assert "fenced" in table and "1 pushed, 0 unchanged, 0 failed, 1 fenced" in table
    assert "fenced" not in render_outcomes([first])  # the count only when it happened
    # The fence token stays in the daemon (withheld: only key names, never values).
    assert set(second.to_dict()) == {"gateway_id", "name", "result", "detail", "withheld"}

    # The leader loop: told once per push round, backs off, delivers nothing.
    fenced: list[FenceToken] = []
    distributor = ConfigDistributor(
        peer.settings,
        document(peer.config_path),
        peer.connector,
        on_fenced=lambda t, _by: fenced.append(t),
    )
    me = Instance("gw-a", "alpha", lead_number=1)
    distributor.update_view(_view(me, peer, epoch=0, installed=True))
    async with _running(distributor):
        await _until(lambda: len(fenced) >= 1)
        assert fenced[0] == _t(1, 5, "gw-new") and distributor.pushes == 0
        assert config.read_bytes() == delivered
        # In the current epoch (ours ranks better than the stored one): delivered.
        distributor.update_view(_view(me, peer, epoch=1, installed=True))
        await _until(lambda: distributor.pushes == 1)
    assert json.loads(config.read_text())["ping"] == {"intervalSeconds": 30}

    # `clawd config push` without a daemon (epoch 0) after our own daemon claimed the
    # peer at a later epoch: that leader is us, so the push goes through in its epoch.
    await peer.claim(_t(2, 1, "gw-a"))
    [own] = await push_many(Reach(peer.connector), [target], ours, peer.settings)
    assert own.result in ("pushed", "unchanged"), own
