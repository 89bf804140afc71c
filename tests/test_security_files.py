"""Files clawd creates under its home are private (0600, folders 0700) even under a
permissive umask, and clawd warns when config.json — the user's file, holding the
PostgreSQL password — is readable by others.

Related, not repeated here: tests/test_json_store.py (peer/state/fleet files 0600 from the
store alone), tests/test_spool.py (spool file 0600), tests/test_backup_pg.py (dump, archive,
manifest 0600 and backups/ 0700), tests/test_control.py and tests/test_daemon_reload.py
(control socket 0600), tests/test_pinger.py (accept-new known_hosts 0600),
tests/test_fleetops_ssh.py (config.json 0600 and scripts 0700 on peers).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from daemonproc import DaemonProcess, run_cli
from pgserver import PgDatabase
from sshpeers import SshFleet, SshPeer

from clawd.config.permissions import warn_if_readable_by_others
from clawd.core.logs import configure_logging
from clawd.serve.control import ControlServer, socket_path

# Nothing is exempt: since issue 12 item 17 the schema copies under migrations/ are private
# too (clawd/keep/store/migrations.py install_migration_files).
PUBLIC: set[str] = set()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Children started inside inherit `mask`."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(home: Path) -> dict[str, int]:
    """Every path clawd created under `home` (not config.json, not PUBLIC) -> its mode."""
    out: dict[str, int] = {}
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home)
        if rel.parts[0] in PUBLIC or rel == Path("config.json"):
            continue
        out[rel.as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return out


def _wrong(modes: dict[str, int], home: Path) -> dict[str, str]:
    wrong = {}
    for rel, mode in modes.items():
        want = 0o700 if (home / rel).is_dir() else 0o600
        if mode != want:
            wrong[rel] = f"{mode:04o} (want {want:04o})"
    return wrong


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, SshPeer]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as fleet:
        yield fleet, await fleet.add_peer("127.0.8.2")


def _write_config(home: Path, db: PgDatabase, fleet: SshFleet, peer: SshPeer) -> Path:
    home.mkdir()
    config = {
        "backend": "postgres",
        "postgres": {
            "host": db.host,
            "port": db.port,
            "database": db.database,
            "user": db.user,
            "password": db.password,
            "poolMin": 1,
            "poolMax": 2,
        },
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 1, "sshUser": "claw"},
        "peers": [{"name": "beta", "gatewayId": "gw-b", "ip": peer.address, "sshPort": peer.port}],
        "ping": {"intervalSeconds": 0.3, "timeoutSeconds": 0.25},
        "ssh": {
            "hostKeyPolicy": "accept-new",  # so clawd writes <home>/known_hosts
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
        },
        "discovery": {"enabled": False},
        "recovery": {"enabled": False},
        "distribution": {"enabled": False},
        "storage": {"flushIntervalSeconds": 0.05},
        "backup": {"schedule": "24h", "verifyRestore": "off"},
    }
    path = home / "config.json"
    path.write_text(json.dumps(config))
    return path


async def test_everything_clawd_writes_is_private_under_umask_0(
    tmp_path: Path, peer: tuple[SshFleet, SshPeer], pg_db: PgDatabase
) -> None:
    fleet, ssh_peer = peer
    home = tmp_path / "home"
    config = _write_config(home, pg_db, fleet, ssh_peer)
    config.chmod(0o600)
    with umask(0):  # nothing clawd writes may rely on the umask
        daemon = DaemonProcess(home)
    with daemon:
        await daemon.await_log("event=ready")
        await daemon.wait_incident("gw-b", "online", 10)
        backup = daemon.cli("backup", "now")
        assert backup.returncode == 0, backup.stderr + daemon.log
        sock = socket_path(home)
        assert stat.S_ISSOCK(sock.lstat().st_mode)
        running = _modes(home)
        assert daemon.stop() == 0, daemon.log
    assert "config_readable_by_others" not in daemon.log  # 0600: no warning
    after = _modes(home)

    for rel in (
        "peers",
        "peers/gw-b.json",
        "state.json",
        "fleet.json",
        "incidents.jsonl",
        "known_hosts",
        "migrations",
        "migrations/001-initial-schema.sql",
        "backups",
        "spool",
        sock.name,
    ):
        assert rel in running or rel in after, f"{rel} not created: {sorted(after)}"
    names = " ".join(after)
    assert ".dump" in names and ".manifest" in names, names  # the backup and its manifest
    assert _wrong(running, home) == {}
    assert _wrong(after, home) == {}


def test_daemon_warns_when_config_is_readable_by_others(tmp_path: Path, pg_db: PgDatabase) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = home / "config.json"
    config.write_text(
        json.dumps({"instance": {"gatewayId": "gw-a"}, "discovery": {"enabled": False}})
    )
    config.chmod(0o644)
    with DaemonProcess(home) as daemon:
        line = daemon.wait_log("config_readable_by_others", timeout=10)
        daemon.wait_log("event=ready")
        assert daemon.stop() == 0
    assert "level=warning" in line and f"path={config}" in line and "mode=0644" in line
    assert f'fix="chmod 600 {config}"' in line
    assert config.stat().st_mode & 0o777 == 0o644  # the user's file: warned about, not changed


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_config_check_warns_when_config_is_readable_by_others(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"postgres": {"password": "s3cret-pw"}}))
    config.chmod(mode)
    result = run_cli(tmp_path, "config", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok:")
    assert ("config_readable_by_others" in result.stderr) is warned, result.stderr
    if warned:
        assert f"mode={mode:04o}" in result.stderr and "chmod 600" in result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_warning_is_one_logfmt_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    out = io.StringIO()
    configure_logging("info", stream=out)
    path.chmod(0o604)
    assert warn_if_readable_by_others(path) is True
    path.chmod(0o600)
    assert warn_if_readable_by_others(path) is False
    assert warn_if_readable_by_others(tmp_path / "missing.json") is False
    structlog.reset_defaults()
    [line] = out.getvalue().splitlines()
    assert "event=config_readable_by_others" in line and "mode=0604" in line


async def test_control_socket_is_0600_without_touching_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The umask is process-wide: changing it while binding made folders other threads
    created meanwhile (the backup folder at start) 0600 — found by the umask-0 test."""
    calls: list[int] = []
    real_umask = os.umask

    def recording_umask(mask: int) -> int:
        calls.append(mask)
        return real_umask(mask)

    server = ControlServer(socket_path(tmp_path), {})
    ready = asyncio.Event()
    with umask(0):
        monkeypatch.setattr(os, "umask", recording_umask)
        task = asyncio.create_task(server.run(ready))
        await asyncio.wait_for(ready.wait(), 5)
        monkeypatch.undo()
    try:
        assert calls == []
        assert stat.S_IMODE(socket_path(tmp_path).stat().st_mode) == 0o600
    finally:
        server.stop()
        await asyncio.wait_for(task, 5)
    assert not socket_path(tmp_path).exists()
