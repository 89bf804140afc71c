"""Issue 14 case 4: another machine announcing clawd's own mDNS instance name does not stop
`clawd run`; it announces under a renamed instance and says so once."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
from daemonproc import DaemonProcess
from mdnspeers import MdnsPeers, claw_peer
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from clawd.sources.mdns_peer import parse_peer

pytestmark = pytest.mark.timeout(90)

OTHER_ADDRESS = "127.0.0.9"  # the other announcer's A record: not ours (127.0.0.1)
STAY_UP_SECONDS = 3.0  # after ready: long enough for a crash or a restart to show


def _config(home: Path, service_type: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    data = {
        "instance": {
            "gatewayId": "gw-main",
            "name": "main",
            "sshUser": "claw",
            "leadNumber": 1,
            "ip": "127.0.0.1",
        },
        "discovery": {"interfaces": ["127.0.0.1"], "serviceType": service_type},
    }
    (home / "config.json").write_text(json.dumps(data))


async def _resolve(service_type: str, name: str) -> AsyncServiceInfo | None:
    """`name`'s records as a browsing peer gets them, or None after a bounded wait."""
    async with AsyncZeroconf(interfaces=["127.0.0.1"]) as aiozc:
        for _ in range(5):  # at most 5 requests of 2 s
            info = AsyncServiceInfo(service_type, f"{name}.{service_type}")
            if await info.async_request(aiozc.zeroconf, 2000):
                return info
    return None


async def test_a_taken_own_name_is_renamed_and_the_daemon_runs(tmp_path: Path) -> None:
    service_type = f"_cn{secrets.token_hex(3)}._tcp.local."
    home = tmp_path / "home"
    _config(home, service_type)
    squatter = claw_peer("gw-main", ip=OTHER_ADDRESS, lead_number=0)
    async with MdnsPeers(service_type, [squatter]):
        with DaemonProcess(home) as daemon:
            await daemon.await_log("event=ready", timeout=45)
            await asyncio.sleep(STAY_UP_SECONDS)
            assert daemon.proc.poll() is None, daemon.log

            info = await _resolve(service_type, "gw-main-2")
            assert info is not None, "gw-main-2 is not announced"
            peer, _ = parse_peer(info)
            # A browsing clawd keys it by the TXT gateway id: the same gateway, no phantom.
            assert peer is not None and peer.gateway_id == "gw-main", info
            assert peer.ip == "127.0.0.1"

            status = daemon.cli("status", "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["mdns"] == {"name": "gw-main-2", "wanted": "gw-main"}
            text = daemon.cli("status")
            assert "announced over mDNS as 'gw-main-2'" in text.stdout, text.stdout

            assert daemon.stop() == 0, daemon.log
    warnings = [ln for ln in daemon.log.splitlines() if "event=mdns_name_conflict" in ln]
    assert len(warnings) == 1, daemon.log
    (line,) = warnings
    assert "level=warning" in line
    assert "wanted=gw-main " in line and "announced=gw-main-2" in line
    assert f"other_address={OTHER_ADDRESS}" in line
    assert "Traceback" not in daemon.log
