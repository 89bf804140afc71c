"""Skill sync in a running `clawd run`: at start, then on `clawd skills sync`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from daemonproc import DaemonProcess, run_cli
from gitrepo import GitRemote, isolate_git


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_git(monkeypatch)


def _audits(home: Path) -> list[tuple[str, str]]:
    path = home / "skill_audit.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["skillName"], r["action"]) for r in rows]


async def test_daemon_syncs_at_start_and_on_request(tmp_path: Path) -> None:
    remote = GitRemote(tmp_path / "git")
    remote.write("alpha/SKILL.md", "# alpha\n")
    remote.write("beta/SKILL.md", "# beta\n")
    remote.commit("two skills")
    home = tmp_path / "home"
    home.mkdir()
    config = {
        "instance": {"gatewayId": "gw-a", "name": "alpha", "githubRepo": remote.url},
        "discovery": {"enabled": False},
        "skills": {"syncInterval": "1h"},
    }
    (home / "config.json").write_text(json.dumps(config))
    daemon = DaemonProcess(home)
    try:
        await daemon.await_log("event=ready")
        await daemon.wait_incident("gw-a", "skill_sync", 15)
        assert sorted(_audits(home)) == [("alpha", "install"), ("beta", "install")]
        assert (home / "skills" / "alpha" / "SKILL.md").read_text() == "# alpha\n"

        remote.write("alpha/SKILL.md", "# alpha v2\n")
        remote.remove("beta/SKILL.md")
        remote.commit("alpha v2, beta gone")
        answer = await asyncio.to_thread(run_cli, home, "skills", "sync")
        assert answer.returncode == 0, answer.stderr
        assert "alpha" in answer.stdout and "update" in answer.stdout
        assert "beta" in answer.stdout and "remove" in answer.stdout
        await daemon.wait_incident("gw-a", "skill_sync", 5, occurrence=2)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    assert sorted(_audits(home)) == [
        ("alpha", "install"),
        ("alpha", "update"),
        ("beta", "install"),
        ("beta", "remove"),
    ]
    assert not (home / "skills" / "beta").exists()
    assert "Traceback" not in daemon.log
