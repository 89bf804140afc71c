"""A connect cancelled part-way (the peer was removed, clawd is stopping) leaves no
connection open on the peer (found by item 20's review of a test that failed 1 run in 3)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from sshpeers import SshFleet

from clawd.config.sections import SshSettings
from clawd.sources.ssh_client import Attempt, Connector

pytestmark = [pytest.mark.timeout(30)]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    async with SshFleet(tmp_path) as fleet:
        yield fleet


async def test_cancel_while_recording_the_host_key_closes_the_connection(
    fleet: SshFleet, tmp_path: Path
) -> None:
    """Issue 12 item 20: removing a peer whose first-use host key was being written to
    known_hosts (accept-new) left its authenticated connection open for good."""
    peer = await fleet.add_peer("127.0.0.31")
    home = tmp_path / "home"
    home.mkdir()
    ssh = SshSettings(
        host_key_policy="accept-new",
        client_keys=(str(fleet.client_key.path),),
        connect_timeout_seconds=5.0,
    )
    connector = Connector(ssh, home)
    entered = asyncio.Event()

    async def slow_write(host: str, port: int, key: asyncssh.SSHKey) -> bool:
        entered.set()  # a slow disk: the write of known_hosts does not come back
        await asyncio.Event().wait()
        return True

    connector._tofu.remember = slow_write  # type: ignore[method-assign]
    task = asyncio.create_task(connector.connect(peer.address, peer.port, "claw", Attempt()))
    async with asyncio.timeout(10):
        await entered.wait()
    assert peer.connections, "the handshake reached the peer"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while peer.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not peer.connections, "the cancelled connect left its connection open"
