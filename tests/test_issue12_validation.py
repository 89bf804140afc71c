"""Issue 12 items 14, 15, 17, 19: config errors name the key or file, never show a secret,
reject semantic mistakes, survive a broken known_hosts; migrations/ is private.

Everything runs the real `clawd` command (config check, run) as a subprocess; item 14 uses
real asyncssh peers (tests/sshpeers.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_cli
from faulthelpers import SELF_ID, daemon_config, write_known_hosts
from sshpeers import SshFleet, SshPeer

PASSWORD = "Hunter2-S3cret"
BAD_BYTES = b"\xff\xfe not utf-8 \xc3\x28\n"


def _check(home: Path, config: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (home / "config.json").write_text(text)
    (home / "config.json").chmod(0o600)
    return run_cli(home, "config", "check")


def _problem_lines(stderr: str) -> list[str]:
    """The `  key: …` lines under `error: <file>: N problem(s):`."""
    lines = stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), stderr
    assert "problem" in lines[0], stderr
    return [line.strip() for line in lines[1:]]


# --------------------------------------------------------------------------- item 15


@pytest.mark.parametrize(
    ("config", "key", "allowed"),
    [
        ({"postgres": f"postgresql://claw:{PASSWORD}@db.lan:5432/claw_clan"}, "postgres:", "host"),
        ({"postgres": ["claw", PASSWORD, "db.lan"]}, "postgres:", "must be an object"),
        ({"postgres": {"port": PASSWORD}}, "postgres.port:", "integer"),
        ({"postgres": {"password": [PASSWORD]}}, "postgres.password:", "string"),
        (
            {"postgres": {"user": {"name": "claw", "password": PASSWORD}}},
            "postgres.user:",
            "string",
        ),
        ({"backend": f"postgresql://claw:{PASSWORD}@db/claw"}, "backend:", "json, postgres"),
        ({"skills": {"syncInterval": f"https://bot:{PASSWORD}@git.lan/x"}}, "skills.sync", "off"),
        ({"instance": {"name": [f"host=db password={PASSWORD}"]}}, "instance.name:", "string"),
        ({"peers": {"name": "b", "token": PASSWORD}}, "peers:", "tuple"),
    ],
)
def test_config_errors_never_show_a_password(
    tmp_path: Path, config: dict[str, Any], key: str, allowed: str
) -> None:
    """Issue 12 item 15: a DSN string, a postgres list, a password in a wrong-typed field or a
    URL with a password in any string field: the password is nowhere in stdout/stderr of
    `clawd config check` nor of `clawd run`; the line names the key and what is allowed."""
    home = tmp_path / "home"
    check = _check(home, config)
    assert check.returncode == 2, check.stdout + check.stderr
    assert PASSWORD not in check.stdout + check.stderr
    lines = _problem_lines(check.stderr)
    assert len(lines) == 1, check.stderr
    assert lines[0].startswith(key) and allowed in lines[0], lines
    run = subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", "run"],
        env=dict(os.environ, CLAW_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert PASSWORD not in run.stdout + run.stderr
    assert run.stderr == check.stderr


# --------------------------------------------------------------------------- item 19


def _peer(name: str, ip: str = "127.0.0.2", **more: Any) -> dict[str, Any]:
    return {"name": name, "ip": ip, **more}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"ping": {"intervalSeconds": 5, "timeoutSeconds": 5}},
            "ping.timeoutSeconds: 5 must be less than ping.intervalSeconds (5)",
        ),
        (
            {"ping": {"intervalSeconds": 2, "timeoutSeconds": 3.5}},
            "ping.timeoutSeconds: 3.5 must be less than ping.intervalSeconds (2)",
        ),
        ({"peers": [_peer("b", "10.0.0.999")]}, "peers[0].ip: must be an IPv4 address"),
        ({"peers": [_peer("b", "bad host!")]}, "peers[0].ip: must be an IP address or a host"),
        ({"instance": {"ip": "300.1.1.1"}}, "instance.ip: must be an IPv4 address"),
        (
            {"peers": [_peer("b"), _peer("c"), _peer("b", "127.0.0.4")]},
            "peers[2].name: 'b' is also peers[0].name; must be unique",
        ),
        (
            {"peers": [_peer("b", gatewayId="gw-x"), _peer("c", gatewayId="gw-x")]},
            "peers[1].gatewayId: gateway id 'gw-x' is also the one of peers[0]",
        ),
        (
            {"instance": {"gatewayId": "gw-me"}, "peers": [_peer("b", gatewayId="gw-me")]},
            "peers[0].gatewayId: 'gw-me' is instance.gatewayId",
        ),
        (
            {"detection": {"phiSuspect": 6, "phiOffline": 4.5}},
            "detection.phiSuspect: 6 must not be above detection.phiOffline (4.5)",
        ),
        (
            {"detection": {"flapLowPercent": 70}},
            "detection.flapLowPercent: 70 must not be above detection.flapHighPercent (50)",
        ),
        ({"postgres": {"poolMin": 9, "poolMax": 3}}, "postgres.poolMin: 9 must not be above"),
        (
            {"ping": {"intervalSeconds": 0}},
            "ping.intervalSeconds: 0 is too small (must be greater than 0)",
        ),
        ({"ssh": {"knownHosts": "/nonexistent/known_hosts"}}, "ssh.knownHosts: /nonexistent/"),
        (
            {"ssh": {"clientKeys": ["/nonexistent/id_ed25519"]}},
            "ssh.clientKeys[0]: /nonexistent/id_ed25519: no such file",
        ),
    ],
)
def test_config_check_names_each_semantic_error_by_key(
    tmp_path: Path, config: dict[str, Any], expected: str
) -> None:
    """Issue 12 item 19: semantic errors are refused by `clawd config check`, one line each,
    naming the dotted key and what is allowed (never the whole section)."""
    check = _check(tmp_path / "home", config)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "Traceback" not in check.stderr
    lines = _problem_lines(check.stderr)
    assert len(lines) == 1, check.stderr
    assert lines[0].startswith(expected), lines
    assert "{" not in lines[0], lines  # no section dump


def test_several_semantic_errors_are_each_one_line(tmp_path: Path) -> None:
    """Issue 12 item 19: all cross-field problems are listed, one line per key."""
    check = _check(
        tmp_path / "home",
        {
            "detection": {"phiSuspect": 9, "phiOffline": 3, "flapLowPercent": 80},
            "peers": [_peer("b", gatewayId="g"), _peer("c", gatewayId="g"), _peer("b")],
            "ssh": {"clientKeys": [str(tmp_path / "none")]},
        },
    )
    assert check.returncode == 2
    lines = _problem_lines(check.stderr)
    keys = sorted(line.split(":")[0] for line in lines)
    assert keys == [
        "detection.flapLowPercent",
        "detection.phiSuspect",
        "peers[1].gatewayId",
        "peers[2].name",
    ], lines
    # File checks run once the document itself is valid.
    fixed = _check(tmp_path / "home", {"ssh": {"clientKeys": [str(tmp_path / "none")]}})
    assert _problem_lines(fixed.stderr)[0].startswith("ssh.clientKeys[0]:")


def test_the_example_and_an_interval_only_config_still_pass(tmp_path: Path) -> None:
    """Issue 12 item 19: an older config.json that shortened only ping.intervalSeconds (the
    timeout was 5 s) still passes: an unset timeout is at most half the interval."""
    example = json.loads((Path(__file__).resolve().parents[1] / "config.example.json").read_text())
    assert _check(tmp_path / "a", example).returncode == 0
    check = _check(tmp_path / "b", {"ping": {"intervalSeconds": 2}})
    assert check.returncode == 0, check.stderr


def test_run_refuses_and_reload_rejects_a_semantic_error(tmp_path: Path) -> None:
    """Issue 12 item 19: `clawd run` does not start with such a config (exit 2, one line);
    a live reload with one is rejected and the running configuration stays."""
    home = tmp_path / "home"
    bad = {"discovery": {"enabled": False}, "ping": {"intervalSeconds": 3, "timeoutSeconds": 3}}
    _check(home, bad)
    daemon = DaemonProcess(home)
    assert daemon.proc.wait(timeout=30) == 2
    daemon.read()
    assert "ping.timeoutSeconds: 3 must be less than ping.intervalSeconds (3)" in daemon.log
    assert "Traceback" not in daemon.log
    daemon.stop()

    good = {"discovery": {"enabled": False}, "ping": {"intervalSeconds": 3}}
    _check(home, good)
    with DaemonProcess(home) as running:
        running.wait_log("event=ready")
        mark = len(running.log)
        bad_peers = {**good, "peers": [_peer("b"), _peer("b", "127.0.0.3")]}
        (home / "config.json").write_text(json.dumps(bad_peers))
        line = running.wait_log("config_rejected", 15, after=mark)
        assert "peers[1].name" in line and "the running configuration stays" in line
        assert running.stop() == 0


# --------------------------------------------------------------------------- item 17


def test_migrations_are_private_under_umask_0(tmp_path: Path) -> None:
    """Issue 12 item 17: `<home>/migrations` is 0700 with 0600 files even under umask 000,
    and an older clawd's 0755/0644 copy is tightened."""
    home = tmp_path / "home"
    (home / "migrations").mkdir(parents=True, mode=0o755)
    (home / "migrations").chmod(0o755)
    code = (
        "import os, sys; from pathlib import Path; os.umask(0);"
        "from clawd.keep.store.migrations import install_migration_files;"
        "install_migration_files(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(home)], check=True, timeout=30)
    folder = home / "migrations"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert files and all(p.suffix == ".sql" for p in files)
    assert {f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in files} == {"0600"}
    (files[0]).chmod(0o644)  # a copy left by an older clawd, content unchanged
    subprocess.run([sys.executable, "-c", code, str(home)], check=True, timeout=30)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


# --------------------------------------------------------------------------- item 14


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        peers = {f"gw-k{n}": await ssh_fleet.add_peer(f"127.0.9.{20 + n}") for n in range(3)}
        write_known_hosts(ssh_fleet)
        yield ssh_fleet, peers


def _home(tmp_path: Path, fleet: SshFleet, peers: dict[str, SshPeer]) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    config = daemon_config(fleet, peers, interval=0.3)
    config["instance"]["gatewayId"] = SELF_ID
    (home / "config.json").write_text(json.dumps(config))
    (home / "config.json").chmod(0o600)
    return home


async def test_known_hosts_not_utf8_at_start_is_one_config_error(
    tmp_path: Path, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    """Issue 12 item 14: a known_hosts holding invalid UTF-8 stops `clawd run` at start with
    one line naming the file (exit 2, like every config error); `config check` says the same."""
    ssh_fleet, peers = fleet
    known_hosts = ssh_fleet.directory / "known_hosts"
    known_hosts.write_bytes(known_hosts.read_bytes() + BAD_BYTES)
    home = _home(tmp_path, ssh_fleet, peers)
    daemon = DaemonProcess(home)
    code = await asyncio.to_thread(daemon.proc.wait, 30)
    daemon.stop()
    assert code == 2, daemon.log
    lines = daemon.log.strip().splitlines()
    assert lines[0].startswith("error: ") and len(lines) == 2, daemon.log
    assert lines[1].strip().startswith(f"ssh.knownHosts: {known_hosts}: not UTF-8 text")
    assert "UnicodeDecodeError" not in daemon.log and "Traceback" not in daemon.log
    check = run_cli(home, "config", "check")
    assert check.returncode == 2 and check.stderr == daemon.log
    assert not (home / "incidents.jsonl").exists()


async def test_known_hosts_turning_bad_while_running_keeps_peers_online(
    tmp_path: Path, fleet: tuple[SshFleet, dict[str, SshPeer]]
) -> None:
    """Issue 12 item 14: known_hosts replaced by bad bytes while clawd runs: exactly one error
    line naming the file, the last good copy stays in force (reconnects still work), every
    peer stays online and no partition is recorded."""
    ssh_fleet, peers = fleet
    known_hosts = ssh_fleet.directory / "known_hosts"
    home = _home(tmp_path, ssh_fleet, peers)
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        for gid in peers:
            await daemon.wait_incident(gid, "online", 15)
        known_hosts.write_bytes(BAD_BYTES + known_hosts.read_bytes())
        await asyncio.sleep(0.2)
        connected = daemon.log.count("ssh_connected")
        # Every connection is new: each reconnect reads known_hosts again.
        for peer in peers.values():
            await peer.drop_connections()
        deadline = time.monotonic() + 20
        while daemon.log.count("ssh_connected") < connected + len(peers):
            assert time.monotonic() < deadline, daemon.log[-3000:]
            await asyncio.sleep(0.1)
            daemon.read()
        await asyncio.sleep(3.0)  # ten more ping rounds
        daemon.read()
        assert daemon.stop() == 0, daemon.log[-3000:]
    errors = [line for line in daemon.log.splitlines() if "ssh_file_unreadable" in line]
    assert len(errors) == 1, errors
    assert f"file={known_hosts}" in errors[0] and "not UTF-8" in errors[0]
    assert "last good copy" in errors[0]
    assert "UnicodeDecodeError" not in daemon.log and "crashed" not in daemon.log
    assert "host key not trusted" not in daemon.log
    events = daemon.incidents()
    assert not [e for e in events if e[1] in {"partition", "offline"}], events
    statuses = {
        gid: json.loads((home / "peers" / f"{gid}.json").read_text())["status"] for gid in peers
    }
    assert set(statuses.values()) == {"online"}, statuses
