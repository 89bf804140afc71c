"""Skills sync with backend=postgres: the audit trail reaches PostgreSQL exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gitrepo import GitRemote, isolate_git
from helpers_pg import (
    SELF_ID,
    connect,
    settings_data,
    start_repo,
    stop_repo,
    wait_delivered,
    wait_ready,
)
from pgserver import PgDatabase

from clawd.act.skills.syncer import SkillSyncer
from clawd.cli import main as cli
from clawd.config.load import settings_from_data
from clawd.keep.incidents import IncidentRecorder


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_git(monkeypatch)


async def skill_rows(db: PgDatabase) -> list[tuple[str, str, str, str]]:
    async with connect(db) as conn:
        rows = await conn.fetch(
            "SELECT gateway_id, skill_name, action, source FROM skill_audit ORDER BY id"
        )
    return [(r["gateway_id"], r["skill_name"], r["action"], r["source"]) for r in rows]


async def skill_incident_details(db: PgDatabase) -> list[dict[str, object]]:
    async with connect(db) as conn:
        rows = await conn.fetch(
            "SELECT details FROM incident_log WHERE event_type = 'skill_sync' ORDER BY id"
        )
    return [json.loads(r["details"]) for r in rows]


async def test_install_update_remove_are_three_rows_in_postgres(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    remote = GitRemote(tmp_path / "git")
    home = tmp_path / "home"
    data = settings_data(pg_db, home)
    data["instance"]["githubRepo"] = remote.url
    settings = settings_from_data(data, environ={})
    repo, ready = await start_repo(settings)
    commits = []
    try:
        assert await wait_ready(repo, ready, 15)
        syncer = SkillSyncer(settings, repo, IncidentRecorder(repo))
        remote.write("alpha/SKILL.md", "# alpha\n")
        commits.append(remote.commit("add"))
        assert (await syncer.sync("test")).installed == ["alpha"]
        remote.write("alpha/SKILL.md", "# alpha v2\n")
        commits.append(remote.commit("change"))
        assert (await syncer.sync("test")).updated == ["alpha"]
        remote.remove("alpha")
        commits.append(remote.commit("remove"))
        assert (await syncer.sync("test")).removed == ["alpha"]
        assert not (await syncer.sync("test")).changed
        await wait_delivered(repo)
    finally:
        await stop_repo(repo)

    assert await skill_rows(pg_db) == [
        (SELF_ID, "alpha", action, f"{remote.url}@{commit}")
        for action, commit in zip(("install", "update", "remove"), commits, strict=True)
    ]
    details = await skill_incident_details(pg_db)
    assert [(d["installed"], d["updated"], d["removed"], d["commit"]) for d in details] == [
        (1, 0, 0, commits[0]),
        (0, 1, 0, commits[1]),
        (0, 0, 1, commits[2]),
    ]


def test_cli_sync_and_audit_with_postgres(
    pg_db: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    remote = GitRemote(tmp_path / "git")
    remote.write("alpha/SKILL.md", "# alpha\n")
    remote.write("beta/SKILL.md", "# beta\n")
    remote.commit("two skills")
    home = tmp_path / "home"
    home.mkdir()
    data = settings_data(pg_db, home)
    data["instance"]["githubRepo"] = str(remote.bare)
    config = home / "config.json"
    config.write_text(json.dumps(data))

    assert cli.main(["skills", "sync", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "alpha  install" in out and "beta   install" in out
    assert "2 installed, 0 updated, 0 removed" in out
    # The direct sync drained its writes to PostgreSQL before returning.
    rows = asyncio.run(skill_rows(pg_db))
    assert [(r[1], r[2]) for r in rows] == [("alpha", "install"), ("beta", "install")]

    assert cli.main(["skills", "audit", "--json", "--config", str(config)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["skill_name"], r["action"]) for r in listed] == [
        ("alpha", "install"),
        ("beta", "install"),
    ]
