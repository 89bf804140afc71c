"""The PostgreSQL password never shows: not in the daemon's log, `ps`, CLI errors,
`clawd status`, metrics, config-push results, reload answers or backup names.

Related, not repeated here: tests/test_backup_pg.py `test_password_only_in_the_environment`
and tests/test_backup_daemon.py (pg_dump's argv holds no password: PGPASSWORD only),
tests/test_cli_db.py (`clawd db migrate` with a wrong password / CLAW_PG_PASS),
tests/test_daemon_reload.py `test_secrets_are_named_not_shown`, tests/test_logs.py
(secret-named log fields masked), tests/test_skills_urls.py (credentials in skill repo
URLs masked by clawd/act/skills/urls.py), tests/test_cli_config.py (`clawd config check`).
The JSON backup archive holds config.json — with the password — by design (a restore
needs it); it is 0600 in a 0700 folder (tests/test_security_files.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess
from helpers_pg import free_port
from pgserver import BasePg, PgDatabase
from sshpeers import SshFleet, SshPeer

# Distinctive values, searched for everywhere.
MARKER = f"pw-env-{secrets.token_hex(6)}"  # the right password, from CLAW_PG_PASS
IN_FILE = f"pw-file-{secrets.token_hex(6)}"  # config.json's (overridden by the env)
RELOADED = f"pw-reload-{secrets.token_hex(6)}"  # config.json's after an edit
ROTATED = f"pw-rotated-{secrets.token_hex(6)}"  # the server's after a rotation
ALL = (MARKER, IN_FILE, RELOADED, ROTATED)


def _clean(text: str, where: str) -> None:
    for marker in ALL:
        assert marker not in text, f"a password in {where}:\n{text}"


@pytest.fixture
def marked_db(pg_server: BasePg) -> Iterator[PgDatabase]:
    role = f"clawd_sec_{uuid.uuid4().hex[:8]}"
    pg_server.create_role(role, MARKER)
    name = f"claw_sec_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name, owner=role)
    try:
        yield pg_server.database(name, role, MARKER)
    finally:
        pg_server.drop_database(name)
        pg_server.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, SshPeer]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    root = tmp_path / "peer-root"
    root.mkdir()
    async with SshFleet(keys) as fleet:
        ssh_peer = await fleet.add_peer("127.0.9.2", root=root)
        (keys / "known_hosts").write_text(fleet.known_hosts_text())
        yield fleet, ssh_peer


def _config(db: PgDatabase, password: str, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "postgres",
        "postgres": {
            "host": db.host,
            "port": db.port,
            "database": db.database,
            "user": db.user,
            "password": password,
            "poolMin": 1,
            "poolMax": 2,
            "connectTimeoutSeconds": 2,
        },
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 1, "sshUser": "claw"},
        "discovery": {"enabled": False},
        "storage": {
            "flushIntervalSeconds": 0.05,
            "retryInitialSeconds": 0.2,
            "retryMaxSeconds": 0.5,
        },
        "backup": {"schedule": "24h", "verifyRestore": "off"},
        **extra,
    }


def _write(home: Path, config: dict[str, Any]) -> None:
    path = home / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)


def _cmdlines(pid: int) -> list[str]:
    """argv of `pid` and of every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            found.append(Path(f"/proc/{current}/cmdline").read_bytes().decode(errors="replace"))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return found


async def _until_postgres(daemon: DaemonProcess, ok: Callable[[str], bool]) -> str:
    """The running daemon's PostgreSQL state (`clawd status --live`) once `ok` holds."""
    deadline = time.monotonic() + 15
    while True:
        answer = daemon.cli("status", "--json", "--live")
        state = str(json.loads(answer.stdout).get("postgres")) if answer.returncode == 0 else ""
        if ok(state):
            return state
        assert time.monotonic() < deadline, f"postgres is {state!r}:\n{daemon.log}"
        await asyncio.sleep(0.1)


async def test_daemon_never_shows_the_password(
    tmp_path: Path, marked_db: PgDatabase, peer: tuple[SshFleet, SshPeer], pg_server: BasePg
) -> None:
    fleet, ssh_peer = peer
    home = tmp_path / "home"
    home.mkdir()
    metrics_port = free_port()
    extra = {
        "peers": [
            {"name": "beta", "gatewayId": "gw-b", "ip": ssh_peer.address, "sshPort": ssh_peer.port}
        ],
        "ping": {"intervalSeconds": 0.3, "timeoutSeconds": 0.25},
        "ssh": {
            "knownHosts": str(fleet.directory / "known_hosts"),
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
        },
        "distribution": {"enabled": False},
        "recovery": {"enabled": False},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
    }
    _write(home, _config(marked_db, IN_FILE, **extra))
    outputs: dict[str, str] = {}
    with DaemonProcess(home, env={"CLAW_PG_PASS": MARKER}) as daemon:
        await daemon.await_log("event=ready")
        await daemon.wait_incident("gw-b", "online", 10)
        await _until_postgres(daemon, lambda state: "unavailable" not in state)
        outputs["ps"] = "\n".join(_cmdlines(daemon.proc.pid))

        backup = daemon.cli("backup", "now")
        assert backup.returncode == 0, backup.stderr + daemon.log
        outputs["backup now"] = backup.stdout + backup.stderr
        listing = daemon.cli("backup", "list", "--json")
        outputs["backup list"] = listing.stdout + listing.stderr
        for args in (("status",), ("status", "--json", "--live"), ("status", "--live")):
            answer = daemon.cli(*args)
            assert answer.returncode == 0, answer.stderr
            outputs[" ".join(args)] = answer.stdout + answer.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            outputs["metrics"] = r.read().decode()
        push = daemon.cli("config", "push")
        outputs["config push"] = push.stdout + push.stderr
        assert "pushed" in push.stdout, push.stdout + push.stderr

        # An edit with a new password (CLAW_PG_PASS still wins): the answer shows no value.
        _write(home, _config(marked_db, RELOADED, **extra))
        reload = daemon.cli("reload")
        assert reload.returncode == 0, reload.stderr
        assert reload.stdout.startswith("reloaded:")
        outputs["reload"] = reload.stdout + reload.stderr

        # The server's password is rotated under the running daemon: its errors say why.
        pg_server.execute(f"ALTER ROLE {marked_db.user} PASSWORD '{ROTATED}'")
        pg_server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE usename = '{marked_db.user}'"
        )
        await daemon.await_log("password authentication failed", timeout=15)
        live = daemon.cli("status", "--json", "--live")
        outputs["status after rotation"] = live.stdout + live.stderr
        outputs["ps after rotation"] = "\n".join(_cmdlines(daemon.proc.pid))
        assert daemon.stop() == 0, daemon.log
    outputs["log"] = daemon.log
    for where, text in outputs.items():
        _clean(text, where)

    backups = home / "backups"
    names = [p.name for p in backups.iterdir()]
    assert any(n.endswith(".dump") for n in names), names
    _clean(" ".join(names), "backup file names")
    for manifest in backups.glob("*.manifest.json"):
        _clean(manifest.read_text(), manifest.name)
    _clean((home / "incidents.jsonl").read_text(), "incidents.jsonl")
    for path in (home / "peers").iterdir():
        _clean(path.read_text(), path.name)


def _cli(home: Path, password: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CLAW_HOME=str(home), CLAW_PG_PASS=password)
    return subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


COMMANDS = [
    ("db", "migrate"),
    ("db", "import-json"),
    ("backup", "now"),
    ("incidents",),
    ("report",),
    ("skills", "audit"),
]


@pytest.mark.parametrize("problem", ["wrong password", "unreachable"])
def test_cli_errors_never_show_the_password(
    tmp_path: Path, pg_db: PgDatabase, problem: str
) -> None:
    port = free_port() if problem == "unreachable" else pg_db.port
    db = PgDatabase(pg_db.host, port, pg_db.database, pg_db.user, IN_FILE)
    _write(tmp_path, _config(db, IN_FILE))
    for args in COMMANDS:
        started = time.monotonic()
        result = _cli(tmp_path, MARKER, *args)
        both = result.stdout + result.stderr
        assert result.returncode != 0, f"{args}: {both}"
        assert "Traceback" not in both, f"{args}: {both}"
        assert "error" in result.stderr, f"{args}: {both}"
        _clean(both, " ".join(args))
        assert time.monotonic() - started < 15, args
