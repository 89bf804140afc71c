"""Indirect probes over real SSH (issue 14 case 6): the prober reaches a target's SSH port
through a `direct-tcpip` channel on its connection to an OpenSSH helper, which has no clawd
on its PATH; a helper whose sshd forbids forwarding is reported once and has no vote; a
lying helper (an asyncssh server that answers every channel with a made-up banner) is
outvoted, from its channel all the way to the peer's status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
import structlog
from sshpeers import (
    ClientKey,
    OpenSshServer,
    SshFleet,
    SshPeer,
    make_client_key,
    new_host_key,
    sshd_path,
)
from test_detection import Fleet, _online, at, threshold

from clawd.core.model import EventType, PeerStatus
from clawd.core.observations import ProbeResult
from clawd.sources.indirect import IndirectProber, ProbeVerdict

pytestmark = pytest.mark.timeout(60)

HELPER_ADDRESSES = {"gw-01": "127.0.25.2", "gw-02": "127.0.25.3", "gw-03": "127.0.25.4"}
HELPERS = tuple(HELPER_ADDRESSES)
NO_FORWARDING = "127.0.25.5"  # its sshd says AllowTcpForwarding no
LIAR = "127.0.25.6"
TARGET = "127.0.25.10"
FAKE_BANNER = b"SSH-2.0-OpenSSH_9.2p1 (a liar: the target is dead)\r\n"


class _FakeBanner(asyncssh.SSHTCPSession[bytes]):
    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        chan.write(FAKE_BANNER)


class _Liar(asyncssh.SSHServer):
    """A rogue helper: lets anyone in, and answers every forwarding request itself."""

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication needed

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> _FakeBanner:
        return _FakeBanner()


@dataclass
class Rig:
    target_fleet: SshFleet
    target: SshPeer
    conns: dict[str, asyncssh.SSHClientConnection]

    def connection(self, gid: str) -> asyncssh.SSHClientConnection | None:
        return self.conns.get(gid)

    @property
    def target_connections(self) -> int:
        return self.target_fleet.counters.accepted


async def _connect(
    address: str, sshd: OpenSshServer, key: ClientKey
) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        address,
        sshd.port,
        username=sshd.user,
        known_hosts=asyncssh.import_known_hosts(sshd.known_hosts_text()),
        client_keys=[key.key],
        agent_path=None,
        config=None,
    )


@pytest.fixture
async def rig(tmp_path: Path, no_blocking: None) -> AsyncIterator[Rig]:
    if sshd_path() is None:
        pytest.fail("OpenSSH sshd not found: make system-deps (apt-get install openssh-server)")
    key = make_client_key(tmp_path)
    for name in ("helpers", "no-forwarding", "target"):
        (tmp_path / name).mkdir()
    addresses = list(HELPER_ADDRESSES.values())
    helpers = OpenSshServer(tmp_path / "helpers", addresses, [key.public_line])
    refusing = OpenSshServer(
        tmp_path / "no-forwarding",
        [NO_FORWARDING],
        [key.public_line],
        extra_config=["AllowTcpForwarding no"],
    )
    liar = await asyncssh.listen(
        LIAR, 0, server_host_keys=[new_host_key()], server_factory=_Liar, config=None
    )
    conns: dict[str, asyncssh.SSHClientConnection] = {}
    try:
        async with helpers, refusing, SshFleet(tmp_path / "target") as target_fleet:
            target = await target_fleet.add_peer(TARGET)
            for gid, address in HELPER_ADDRESSES.items():
                conns[gid] = await _connect(address, helpers, key)
            conns["gw-nofwd"] = await _connect(NO_FORWARDING, refusing, key)
            conns["gw-liar"] = await asyncssh.connect(
                LIAR, liar.get_port(), username="x", known_hosts=None, agent_path=None, config=None
            )
            try:
                yield Rig(target_fleet, target, conns)
            finally:
                for conn in conns.values():
                    conn.close()
                    await conn.wait_closed()
    finally:
        liar.close()
        await liar.wait_closed()


async def test_openssh_helpers_reach_the_target_with_no_clawd_on_their_path(rig: Rig) -> None:
    # What main's daemon asked helpers to run: a real login has no clawd on its PATH.
    ran = await rig.conns["gw-01"].run("clawd probe 127.0.0.1:22 --json", timeout=10)
    assert ran.exit_status == 127 and "not found" in str(ran.stderr), ran

    prober = IndirectProber(rig.connection, timeout=2, k=3)
    before = rig.target_connections
    start = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        verdict = await prober.probe("gw-t", TARGET, rig.target.port, HELPERS)
    took = time.monotonic() - start

    assert verdict.asked == HELPERS == verdict.reachable_by, verdict
    assert verdict.unreachable_by == () and dict(verdict.errors) == {}
    assert verdict.reachable and not verdict.confirmed_down
    assert rig.target_connections == before + 3  # one TCP connection per helper, from sshd
    assert rig.target_fleet.counters.authenticated == 0  # read the banner, never logged in
    assert [e["event"] for e in logs] == ["indirect_probe"]
    assert logs[0]["reachable"] is True and logs[0]["reachable_by"] == 3
    assert took < 2.0, took

    await rig.target.stop()  # the port now refuses: each helper's connect fails
    down = await prober.probe("gw-t", TARGET, rig.target.port, HELPERS)
    assert down.unreachable_by == HELPERS and dict(down.errors) == {}, down
    assert down.confirmed_down and not down.reachable
    # The borrowed connections stay open and usable.
    assert (await rig.conns["gw-01"].run("true", timeout=5)).exit_status == 0


async def test_a_helper_that_forbids_forwarding_is_reported_once_and_has_no_vote(
    rig: Rig,
) -> None:
    prober = IndirectProber(rig.connection, timeout=2, k=3)
    helpers = ("gw-01", "gw-02", "gw-nofwd")
    verdicts: list[ProbeVerdict] = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            verdicts.append(await prober.probe("gw-t", TARGET, rig.target.port, helpers))
    for verdict in verdicts:
        assert verdict.reachable_by == ("gw-01", "gw-02") and verdict.unreachable_by == ()
        assert verdict.reachable  # 2 of 3 asked
        error = verdict.errors["gw-nofwd"]
        assert error.startswith("helper forbids TCP forwarding (sshd's AllowTcp"), error
        assert "\n" not in error and len(error) <= 120
    refused = [e for e in logs if e["event"] == "probe_forwarding_refused"]
    assert len(refused) == 1, logs
    assert refused[0]["helper"] == "gw-nofwd" and refused[0]["log_level"] == "warning"
    assert refused[0]["error"] == verdicts[0].errors["gw-nofwd"]
    assert not [e for e in logs if e["event"] == "indirect_probe_helper_failed"]

    # Two helpers, one of them refusing: the one that reached it is not a majority.
    pair = await prober.probe("gw-t", TARGET, rig.target.port, ("gw-01", "gw-nofwd"))
    assert pair.reachable_by == ("gw-01",) and not pair.reachable


async def test_one_lying_helper_cannot_overturn_offline(rig: Rig) -> None:
    await rig.target.stop()
    prober = IndirectProber(rig.connection, timeout=2, k=3)
    verdict = await prober.probe("gw-00", TARGET, rig.target.port, ("gw-01", "gw-02", "gw-liar"))
    assert verdict.reachable_by == ("gw-liar",), verdict  # it did lie
    assert verdict.unreachable_by == ("gw-01", "gw-02")
    assert not verdict.reachable and verdict.confirmed_down

    # That verdict, as the reconciler gets it: the dead peer goes offline.
    fleet = Fleet(threshold(2, probes=3), peers=3)
    _online(fleet, ["gw-00", "gw-01", "gw-02"])
    fleet.ping("gw-00", 2, ok=False)
    fleet.ping("gw-00", 3, ok=False)
    fleet.feed(
        ProbeResult("gw-00", at(3.5), verdict.asked, verdict.reachable_by, verdict.unreachable_by)
    )
    assert fleet.status("gw-00") is PeerStatus.OFFLINE
    assert fleet.view.peers["gw-00"].rule == "detector-offline"
    assert fleet.incidents(EventType.UNREACHABLE) == []


async def test_a_silent_target_and_a_lost_helper_are_bounded(rig: Rig) -> None:
    silent = await rig.target_fleet.add_silent_peer("127.0.25.11")
    rig.conns["gw-03"].close()
    await rig.conns["gw-03"].wait_closed()
    prober = IndirectProber(rig.connection, timeout=0.5, k=3)
    start = time.monotonic()
    verdict = await prober.probe("gw-s", silent.address, silent.port, HELPERS)
    took = time.monotonic() - start
    assert 0.5 <= took < 0.5 + 1.0, took
    assert verdict.unreachable_by == ("gw-01", "gw-02")  # connected, no banner in time
    assert dict(verdict.errors) == {"gw-03": "connection lost"}
    assert silent.accepted == 2 and not verdict.reachable


async def test_rounds_share_one_round_respect_k_and_skip_unconnected(rig: Rig) -> None:
    prober = IndirectProber(rig.connection, timeout=2, k=2)
    args = ("gw-t", TARGET, rig.target.port, HELPERS)
    before = rig.target_connections
    verdicts = await asyncio.gather(*(prober.probe(*args) for _ in range(5)))
    assert all(v is verdicts[0] for v in verdicts)
    assert len(verdicts[0].asked) == 2 and verdicts[0].reachable
    assert rig.target_connections == before + 2

    helpers = [*HELPERS, "gw-none", "gw-t", "gw-01"]  # no link, the target itself, a repeat
    prober.configure(timeout=2, k=5)
    wide = await prober.probe("gw-t", TARGET, rig.target.port, helpers)
    assert wide.asked == HELPERS == wide.reachable_by
    prober.configure(timeout=2, k=0)  # probes off
    assert await prober.probe(*args) == ProbeVerdict("gw-t", (), (), (), {})
    assert rig.target_connections == before + 2 + 3
