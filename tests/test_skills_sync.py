"""Skills sync against a real local bare git repository, recorded in the JSON store."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from gitrepo import GitRemote, isolate_git

from clawd.act.skills.lock import SkillsLock
from clawd.act.skills.results import SyncResult
from clawd.act.skills.syncer import SkillSyncer
from clawd.config.load import settings_from_data
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging
from clawd.core.model import EventType, Incident, SkillAction, SkillAudit
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.store.factory import build_repository
from clawd.keep.store.json_store import JsonStore
from clawd.keep.store.repository import FleetRepository

SELF_ID = "gw-self"


def make_settings(home: Path, url: str | None, **skills: Any) -> Settings:
    data: dict[str, Any] = {
        "home": str(home),
        "instance": {"gatewayId": SELF_ID, "name": "self-node", "githubRepo": url},
        "skills": {"gitTimeoutSeconds": 30, **skills},
    }
    return settings_from_data(data, environ={})


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_git(monkeypatch)


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    return GitRemote(tmp_path / "git")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
async def repo(home: Path) -> AsyncIterator[FleetRepository]:
    repository = build_repository(make_settings(home, None))
    await repository.open()
    yield repository
    await repository.close()


def syncer_for(settings: Settings, repo: FleetRepository) -> SkillSyncer:
    return SkillSyncer(settings, repo, IncidentRecorder(repo))


def _audits(home: Path) -> list[SkillAudit]:
    return [a for _, a in JsonStore(home).read_skill_audits()]


def _incidents(home: Path) -> list[Incident]:
    return [i for _, i in JsonStore(home).read_incidents() if i.event_type is EventType.SKILL_SYNC]


async def audits(home: Path) -> list[SkillAudit]:
    """The JSON store's skill audit rows (read off the loop: clawd code, no_blocking)."""
    return await asyncio.to_thread(_audits, home)


async def skill_incidents(home: Path) -> list[Incident]:
    return await asyncio.to_thread(_incidents, home)


def leftovers(home: Path) -> list[str]:
    return sorted(
        p.name for p in home.iterdir() if p.name.startswith((".skills-staging", ".skills-old"))
    )


def seed_alpha(remote: GitRemote) -> str:
    remote.write("README.md", "not a skill\n")
    remote.write(".github/workflows/ci.yml", "not a skill either\n")
    remote.write("alpha/SKILL.md", "# alpha\n")
    remote.write("alpha/bin/run.sh", "#!/bin/sh\necho alpha\n", executable=True)
    return remote.commit("add alpha")


@pytest.mark.parametrize("url_kind", ["file-url", "plain-path"])
async def test_install_update_remove_records_three_rows(
    remote: GitRemote, home: Path, repo: FleetRepository, url_kind: str, no_blocking: None
) -> None:
    url = remote.url if url_kind == "file-url" else str(remote.bare)
    syncer = syncer_for(make_settings(home, url), repo)
    skills = home / "skills"

    first = seed_alpha(remote)
    result = await syncer.sync("test")
    assert result.ok, result.error
    assert (result.commit, result.installed, result.updated, result.removed) == (
        first,
        ["alpha"],
        [],
        [],
    )
    assert sorted(p.name for p in skills.iterdir()) == ["alpha"]
    assert (skills / "alpha/SKILL.md").read_text() == "# alpha\n"
    assert os.access(skills / "alpha/bin/run.sh", os.X_OK)

    remote.write("alpha/SKILL.md", "# alpha v2\n")
    second = remote.commit("change alpha")
    result = await syncer.sync("test")
    assert (result.ok, result.installed, result.updated, result.removed) == (
        True,
        [],
        ["alpha"],
        [],
    )
    assert (skills / "alpha/SKILL.md").read_text() == "# alpha v2\n"

    remote.remove("alpha")
    third = remote.commit("remove alpha")
    result = await syncer.sync("test")
    assert (result.ok, result.installed, result.updated, result.removed) == (
        True,
        [],
        [],
        ["alpha"],
    )
    assert list(skills.iterdir()) == []

    rows = await audits(home)
    assert [(a.gateway_id, a.skill_name, a.action) for a in rows] == [
        (SELF_ID, "alpha", SkillAction.INSTALL),
        (SELF_ID, "alpha", SkillAction.UPDATE),
        (SELF_ID, "alpha", SkillAction.REMOVE),
    ]
    assert [a.source for a in rows] == [f"{url}@{c}" for c in (first, second, third)]
    incidents = await skill_incidents(home)
    assert [i.details for i in incidents] == [
        {"installed": 1, "updated": 0, "removed": 0, "commit": first, "source": url},
        {"installed": 0, "updated": 1, "removed": 0, "commit": second, "source": url},
        {"installed": 0, "updated": 0, "removed": 1, "commit": third, "source": url},
    ]
    assert all(i.gateway_id == SELF_ID for i in incidents)
    assert leftovers(home) == []


async def test_no_change_writes_nothing(
    remote: GitRemote, home: Path, repo: FleetRepository
) -> None:
    seed_alpha(remote)
    syncer = syncer_for(make_settings(home, remote.url), repo)
    assert (await syncer.sync("test")).installed == ["alpha"]
    before = (
        (home / "skills").stat().st_ino,
        len(await audits(home)),
        len(await skill_incidents(home)),
    )

    remote.write("README.md", "only the readme changed\n")  # not part of any skill
    remote.commit("docs")
    result = await syncer.sync("test")
    assert result.ok and not result.changed
    assert (
        (home / "skills").stat().st_ino,
        len(await audits(home)),
        len(await skill_incidents(home)),
    ) == before
    assert leftovers(home) == []


async def test_exec_bit_change_is_an_update(
    remote: GitRemote, home: Path, repo: FleetRepository
) -> None:
    remote.write("beta/tool", "#!/bin/sh\n")
    remote.commit()
    syncer = syncer_for(make_settings(home, remote.url), repo)
    await syncer.sync("test")
    remote.write("beta/tool", "#!/bin/sh\n", executable=True)
    remote.commit("chmod +x")
    assert (await syncer.sync("test")).updated == ["beta"]


async def test_ref_selects_a_tag(remote: GitRemote, home: Path, repo: FleetRepository) -> None:
    remote.write("one/SKILL.md", "1\n")
    tagged = remote.commit("one")
    remote.tag("v1")
    remote.write("two/SKILL.md", "2\n")
    remote.commit("two")
    result = await syncer_for(make_settings(home, remote.url, ref="v1"), repo).sync("test")
    assert (result.ok, result.commit, result.installed) == (True, tagged, ["one"])


async def test_broken_remote_keeps_skills_and_records_nothing(
    remote: GitRemote, home: Path, repo: FleetRepository, tmp_path: Path
) -> None:
    seed_alpha(remote)
    await syncer_for(make_settings(home, remote.url), repo).sync("test")
    before = await audits(home), await skill_incidents(home)

    missing = tmp_path / "no-such-repo.git"
    result = await syncer_for(make_settings(home, str(missing)), repo).sync("test")
    assert not result.ok
    assert result.error is not None and "git fetch" in result.error
    assert (home / "skills/alpha/SKILL.md").read_text() == "# alpha\n"
    assert (await audits(home), await skill_incidents(home)) == before
    assert leftovers(home) == []


async def test_no_repository_configured(home: Path, repo: FleetRepository) -> None:
    result = await syncer_for(make_settings(home, None), repo).sync("test")
    assert not result.ok and "githubRepo" in (result.error or "")


FAKE_GIT = """#!/bin/sh
for arg in "$@"; do
  if [ "$arg" = fetch ]; then
    echo $$ > "{pidfile}"
    exec sleep 60
  fi
done
exec "{real}" "$@"
"""


async def test_hanging_git_is_killed_and_skills_stay(
    remote: GitRemote,
    home: Path,
    repo: FleetRepository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_blocking: None,
) -> None:
    seed_alpha(remote)
    await syncer_for(make_settings(home, remote.url), repo).sync("test")
    remote.write("gamma/SKILL.md", "# gamma\n")
    remote.commit("gamma")

    import shutil

    real = shutil.which("git")
    assert real is not None
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    pidfile = tmp_path / "fetch.pid"
    (fake_bin / "git").write_text(FAKE_GIT.format(pidfile=pidfile, real=real))
    (fake_bin / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    syncer = syncer_for(make_settings(home, remote.url, gitTimeoutSeconds=0.5), repo)
    started = time.monotonic()
    result = await syncer.sync("test")
    assert time.monotonic() - started < 10
    assert not result.ok and "timed out" in (result.error or "")
    assert sorted(p.name for p in (home / "skills").iterdir()) == ["alpha"]
    assert len(await audits(home)) == 1
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_unsafe_symlink_is_refused(
    remote: GitRemote, home: Path, repo: FleetRepository
) -> None:
    seed_alpha(remote)
    await syncer_for(make_settings(home, remote.url), repo).sync("test")
    (remote.work / "evil").mkdir()
    (remote.work / "evil/passwd").symlink_to("/etc/passwd")
    remote.commit("evil")
    result = await syncer_for(make_settings(home, remote.url), repo).sync("test")
    assert not result.ok and "not safe" in (result.error or "")
    assert sorted(p.name for p in (home / "skills").iterdir()) == ["alpha"]
    assert leftovers(home) == []


async def test_concurrent_syncs_are_serialised(
    remote: GitRemote, home: Path, repo: FleetRepository, no_blocking: None
) -> None:
    seed_alpha(remote)
    settings = make_settings(home, remote.url)
    # Two components, as the daemon and `clawd skills sync` are: only the file lock is shared.
    results = await asyncio.gather(
        syncer_for(settings, repo).sync("a"), syncer_for(settings, repo).sync("b")
    )
    assert sorted(len(r.installed) for r in results) == [0, 1]
    assert len(await audits(home)) == 1
    assert len(await skill_incidents(home)) == 1


async def test_sync_waits_for_the_lock(
    remote: GitRemote, home: Path, repo: FleetRepository, no_blocking: None
) -> None:
    seed_alpha(remote)
    syncer = syncer_for(make_settings(home, remote.url), repo)
    async with SkillsLock(home, 1):
        pending = asyncio.ensure_future(syncer.sync("test"))
        await asyncio.sleep(0.5)
        assert not pending.done()
        assert not (home / "skills").exists()
    result = await asyncio.wait_for(pending, 30)
    assert result.installed == ["alpha"]


async def test_stale_staging_removed_and_crash_recovered(
    remote: GitRemote, home: Path, repo: FleetRepository, no_blocking: None
) -> None:
    seed_alpha(remote)
    syncer = syncer_for(make_settings(home, remote.url), repo)
    await syncer.sync("test")
    # A crash between the two renames: only the old tree is left; and a stale staging dir.
    (home / "skills").rename(home / ".skills-old-0badc0ffee00")
    (home / ".skills-staging-0123456789ab/junk").mkdir(parents=True)
    result = await syncer.sync("test")
    assert result.ok and not result.changed
    assert (home / "skills/alpha/SKILL.md").is_file()
    assert leftovers(home) == []


async def test_failure_logged_once_until_it_changes(
    remote: GitRemote, home: Path, repo: FleetRepository, tmp_path: Path
) -> None:
    out = StringIO()
    configure_logging("info", stream=out)
    syncer = syncer_for(make_settings(home, str(tmp_path / "missing.git")), repo)
    await syncer.sync("a")
    await syncer.sync("b")
    assert out.getvalue().count("skills_sync_failed") == 1
    seed_alpha(remote)
    await syncer.reconfigure(make_settings(home, remote.url), frozenset({"instance"}))
    assert (await syncer.sync("c")).ok
    assert "skills_sync_recovered" in out.getvalue()
    await syncer.reconfigure(
        make_settings(home, str(tmp_path / "missing.git")), frozenset({"instance"})
    )
    await syncer.sync("d")
    assert out.getvalue().count("skills_sync_failed") == 2


async def test_credentials_never_shown(home: Path, repo: FleetRepository) -> None:
    out = StringIO()
    configure_logging("debug", stream=out)
    # Nothing listens on port 1: git fails fast, naming the URL.
    url = "http://alice:s3cr3t-t0ken@127.0.0.1:1/skills.git"
    result = await syncer_for(make_settings(home, url), repo).sync("test")
    assert not result.ok
    assert result.source == "http://alice:***@127.0.0.1:1/skills.git"
    text = f"{result.error} {out.getvalue()}"
    assert "s3cr3t" not in text
    assert "127.0.0.1" in text
    config = (home / ".skills-repo/config").read_text()
    assert "s3cr3t" not in config


async def test_run_syncs_at_start_and_answers_control(
    remote: GitRemote, home: Path, repo: FleetRepository, no_blocking: None
) -> None:
    seed_alpha(remote)
    syncer = syncer_for(make_settings(home, remote.url, syncInterval="1h"), repo)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(syncer.run(ready))
        await asyncio.wait_for(ready.wait(), 1)
        for _ in range(200):
            if syncer.last_result is not None:
                break
            await asyncio.sleep(0.05)
        assert syncer.last_result is not None and syncer.last_result.installed == ["alpha"]
        remote.write("delta/SKILL.md", "# delta\n")
        remote.commit("delta")
        answer = await syncer.handle_control({"cmd": "skills-sync", "source": "test"})
        assert answer["ok"] is True and answer["error"] is None
        assert SyncResult.from_dict(answer["result"]).installed == ["delta"]
        syncer.stop()
    assert len(await audits(home)) == 2


@pytest.mark.parametrize("url", [None, "off"])
async def test_run_idle_without_repository_or_schedule(
    remote: GitRemote, home: Path, repo: FleetRepository, url: str | None
) -> None:
    seed_alpha(remote)
    settings = (
        make_settings(home, None)
        if url is None
        else make_settings(home, remote.url, syncInterval="off")
    )
    syncer = syncer_for(settings, repo)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(syncer.run(ready))
        await asyncio.wait_for(ready.wait(), 1)
        await asyncio.sleep(0.3)
        syncer.stop()
    assert syncer.last_result is None
    assert not (home / "skills").exists()


async def test_stop_cancels_a_hanging_scheduled_sync(
    remote: GitRemote,
    home: Path,
    repo: FleetRepository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_blocking: None,
) -> None:
    import shutil

    seed_alpha(remote)
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    pidfile = tmp_path / "fetch.pid"
    (fake_bin / "git").write_text(FAKE_GIT.format(pidfile=pidfile, real=shutil.which("git")))
    (fake_bin / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    syncer = syncer_for(make_settings(home, remote.url, gitTimeoutSeconds=300), repo)
    ready = asyncio.Event()
    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(syncer.run(ready))
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        syncer.stop()
    assert time.monotonic() - started < 15
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)
    assert leftovers(home) == []
