"""`clawd skills sync|audit`: directly, through a running daemon, and the audit listing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gitrepo import GitRemote, isolate_git

from clawd.act.skills.syncer import SkillSyncer
from clawd.cli import main as cli
from clawd.config.load import load_settings
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.factory import build_repository
from clawd.serve.control import ControlServer, socket_path


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_git(monkeypatch)


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    remote = GitRemote(tmp_path / "git")
    remote.write("alpha/SKILL.md", "# alpha\n")
    remote.write("beta/SKILL.md", "# beta\n")
    remote.commit("two skills")
    return remote


def write_config(home: Path, url: str) -> Path:
    home.mkdir(exist_ok=True)
    config = home / "config.json"
    body: dict[str, Any] = {
        "home": str(home),
        "instance": {"gatewayId": "gw-self", "name": "self-node", "githubRepo": url},
        "skills": {"syncInterval": "off", "gitTimeoutSeconds": 30},
    }
    config.write_text(json.dumps(body))
    return config


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_then_audit_json(
    remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "home", remote.url)
    code, out, _ = run(capsys, "skills", "sync", "--config", str(config))
    assert code == 0
    assert out.splitlines()[:3] == ["SKILL  ACTION", "alpha  install", "beta   install"]
    assert "2 installed, 0 updated, 0 removed" in out

    code, out, _ = run(capsys, "skills", "sync", "--config", str(config))
    assert code == 0 and out.startswith("skills up to date with ")

    code, out, _ = run(capsys, "skills", "audit", "--json", "--config", str(config))
    assert code == 0
    rows = json.loads(out)
    assert [(r["gateway_id"], r["skill_name"], r["action"]) for r in rows] == [
        ("gw-self", "alpha", "install"),
        ("gw-self", "beta", "install"),
    ]
    assert all(r["source"].startswith(f"{remote.url}@") for r in rows)

    code, out, _ = run(capsys, "skills", "audit", "--config", str(config))
    assert code == 0
    assert out.splitlines()[0].split() == ["TIME", "GATEWAY", "SKILL", "ACTION", "SOURCE"]
    assert len(out.splitlines()) == 3

    code, out, _ = run(
        capsys, "skills", "audit", "--since", "1s", "--json", "--config", str(config)
    )
    assert code == 0


def test_failed_sync_exits_1_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "home", str(tmp_path / "missing.git"))
    code, out, err = run(capsys, "skills", "sync", "--config", str(config))
    assert code == 1 and out == ""
    assert err.startswith("error: git fetch of ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_since_is_a_user_error(
    remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "home", remote.url)
    code, _, err = run(capsys, "skills", "audit", "--since", "yesterday", "--config", str(config))
    assert code == 2 and err.startswith("error: --since:")


@contextlib.contextmanager
def fake_daemon(config: Path) -> Iterator[list[SkillSyncer]]:
    """A control socket answering "skills-sync" with a SkillSyncer, in a thread of its own."""
    settings = load_settings(config)
    started = threading.Event()
    holder: list[SkillSyncer] = []
    servers: list[ControlServer] = []
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        repo = build_repository(settings)
        await repo.open()
        syncer = SkillSyncer(settings, repo, IncidentRecorder(repo))
        server = ControlServer(socket_path(settings.home), {"skills-sync": syncer.handle_control})
        holder.append(syncer)
        servers.append(server)
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.run(ready))
            await ready.wait()
            started.set()
        await repo.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        yield holder
    finally:
        loop.call_soon_threadsafe(servers[0].stop)
        thread.join(10)
        loop.close()


def test_sync_goes_through_a_running_daemon(
    remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "home", remote.url)
    with fake_daemon(config) as syncers:
        code, out, _ = run(capsys, "skills", "sync", "--config", str(config))
        assert code == 0 and "2 installed" in out
        last = syncers[0].last_result
        assert last is not None and last.installed == ["alpha", "beta"]


def test_daemon_without_the_command(
    remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "home", remote.url)
    settings = load_settings(config)
    started = threading.Event()
    loop = asyncio.new_event_loop()
    server = ControlServer(socket_path(settings.home), {})

    async def serve() -> None:
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.run(ready))
            await ready.wait()
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        code, _, err = run(capsys, "skills", "sync", "--config", str(config))
        assert code == 1 and "does not know `skills-sync`" in err
    finally:
        loop.call_soon_threadsafe(server.stop)
        thread.join(10)
        loop.close()
