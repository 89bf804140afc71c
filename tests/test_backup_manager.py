"""The backup component as the daemon runs it: requests, coalescing, schedule, stop, status."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from blocking import setup_may_block
from helpers_backup import (
    FakeBin,
    backup_settings,
    capture_logs,
    cdb_db,
    fill,
    write_json_store,
)
from pgserver import PgDatabase

from clawd.act.backup import manifest as manifests
from clawd.act.backup.errors import BackupError
from clawd.act.backup.manager import BackupManager
from clawd.act.backup.manifest import Manifest, Verification
from clawd.act.backup.names import backup_dir, stamp_of
from clawd.act.backup.reverify import run_verify
from clawd.config.settings import Settings
from clawd.core.model import utcnow

__all__ = ["cdb_db"]


@setup_may_block
def read_manifests(directory: Path) -> tuple[list[Manifest], list[str]]:
    """The manifests in `directory`, read as a test checks them (blocking)."""
    return manifests.read_all(directory)


@contextlib.asynccontextmanager
async def running(manager: BackupManager) -> AsyncIterator[asyncio.Task[None]]:
    ready = asyncio.Event()
    task = asyncio.create_task(manager.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield task
    finally:
        manager.stop()
        await asyncio.wait_for(task, 15)


async def until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_requests_during_a_backup_coalesce_into_one_follow_up(
    tmp_path: Path, pg_db: PgDatabase
) -> None:
    await fill(pg_db, pings=100)
    fake = FakeBin(tmp_path, delay=1.0)
    settings = backup_settings(tmp_path / "home", pg_db, pgBinDir=str(fake.dir))
    manager = BackupManager(settings)
    logs = capture_logs()
    async with running(manager):
        manager.request("SIGUSR1")
        await until(lambda: manager.running and fake.dumps())
        manager.request("SIGUSR1")
        manager.request("SIGUSR1")
        manager.request("clawd backup now")
        await until(lambda: len(fake.dumps()) == 2 and not manager.running, timeout=20)
        await asyncio.sleep(1.5)  # nothing else is coming
        assert len(fake.dumps()) == 2
        assert manager.backups_started == 2
    text = logs.getvalue()
    assert text.count("event=backup_request_queued") == 1
    assert text.count("event=backup_request_coalesced") == 2
    assert text.count("event=backup_done") == 2
    found, _ = read_manifests(backup_dir(settings.home))
    assert [m.status for m in found] == ["ok", "ok"]
    assert len({m.stamp for m in found}) == 2  # never the same name twice


async def test_backup_now_waits_for_its_own_backup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    manager = BackupManager(backup_settings(home))
    async with running(manager):
        first, second = await asyncio.gather(
            manager.backup_now("clawd backup now"), manager.backup_now("cron")
        )
        assert first.ok and first == second  # requested together: one backup serves both
        assert [f.kind for f in first.files] == ["json"]
        answer = await manager.handle_control({"cmd": "backup"})
        assert answer["ok"] and answer["result"]["stamp"] != first.stamp
        assert manager.status_line() == "last backup 0s ago"
    with pytest.raises(BackupError, match="not running"):
        await manager.backup_now("late")


async def test_stop_cancels_a_running_dump_and_cleans_up(tmp_path: Path, pg_db: PgDatabase) -> None:
    await fill(pg_db, pings=10)
    fake = FakeBin(tmp_path, delay=30)
    settings = backup_settings(tmp_path / "home", pg_db, pgBinDir=str(fake.dir))
    manager = BackupManager(settings)
    ready = asyncio.Event()
    task = asyncio.create_task(manager.run(ready))
    await ready.wait()
    waiting = asyncio.create_task(manager.backup_now("test"))
    await until(lambda: bool(fake.dumps()))
    assert manager.status_line().startswith("backup running (test, started")
    started = time.monotonic()
    manager.stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 5  # the dump would take 30 s: it was killed
    with pytest.raises(BackupError, match="stopping"):
        await waiting
    directory = backup_dir(settings.home)
    assert not list(directory.glob("*.partial")) and not list(directory.glob("*.dump"))
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(fake.dumps()[0], 0)


async def test_interval_schedule_runs_backups_by_itself(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    changes: list[str] = []
    manager = BackupManager(backup_settings(home, schedule="1s"), check_seconds=0.2)
    manager.on_change = lambda: changes.append(manager.status_line())
    async with running(manager):
        assert manager.status_line() == "no backup yet (every 1s)"
        await until(lambda: manager.backups_started >= 2, timeout=6)
        # A live settings change: the next one is a day away now.
        await manager.reconfigure(
            backup_settings(home, schedule="24h"), frozenset({"backup", "backup.schedule"})
        )
        count = manager.backups_started
        await asyncio.sleep(1.5)
        assert manager.backups_started in (count, count + 1)  # at most one already due
    assert any(c.startswith("backup running (schedule") for c in changes)
    assert changes[-1].startswith("last backup")


async def test_failure_shows_in_status_until_a_backup_succeeds(
    tmp_path: Path, pg_db: PgDatabase
) -> None:
    home = tmp_path / "home"
    good = backup_settings(home, pg_db)
    bad = good.model_copy(update={"postgres": good.postgres.model_copy(update={"port": 1})})
    manager = BackupManager(bad)
    async with running(manager):
        result = await manager.backup_now("test")
        assert not result.ok
        assert manager.status_line().startswith("last backup failed: cannot connect to PostgreSQL")
    # A restart remembers the failure from the manifest.
    again = BackupManager(good)
    async with running(again):
        assert again.status_line().startswith("last backup failed: cannot connect")
        await fill(pg_db, pings=5)
        assert (await again.backup_now("test")).ok
        assert again.status_line() == "last backup 0s ago"


@setup_may_block
def _old_manifest(settings: Settings, days: float) -> None:
    created = utcnow() - timedelta(days=days)
    m = Manifest(
        stamp=stamp_of(created),
        created_at=created.isoformat(),
        status="ok",
        source="test",
        backend="json",
        duration_s=0.1,
        verification=Verification(ok=True, at=created.isoformat(), checksum="ok", readable="ok"),
    )
    directory = backup_dir(settings.home)
    directory.mkdir(parents=True, exist_ok=True)
    manifests.write(directory, m)


async def test_overdue_is_warned_and_a_missed_backup_runs_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    settings = backup_settings(home, schedule="1d")
    _old_manifest(settings, days=3)
    logs = capture_logs()
    manager = BackupManager(settings)
    async with running(manager):
        await until(lambda: "event=backup_done" in logs.getvalue())
        assert manager.status_line() == "last backup 0s ago"
    text = logs.getvalue()
    warning = next(ln for ln in text.splitlines() if "event=backup_overdue" in ln)
    assert "level=warning" in warning and "limit=2d" in warning
    assert text.index("event=backup_overdue") < text.index("event=backup_done")


async def test_status_says_overdue_when_backups_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = backup_settings(home, schedule="03:00")
    _old_manifest(settings, days=2.5)
    manager = BackupManager(settings)
    # Not started: status from what the directory says, no backup taken.
    await asyncio.to_thread(manager._start_up)
    assert manager.status_line() == "backup overdue: last good backup 2d12h ago"


async def test_backup_makes_no_blocking_call_on_the_event_loop(
    tmp_path: Path, cdb_db: PgDatabase
) -> None:
    """Like the `no_blocking` fixture, but armed after the set-up (the migrations runner
    reads its files on the loop; that is not the code under test), and allowing asyncpg's
    own look-up of ~/.postgresql and ~/.pgpass while it connects."""
    from blockbuster import blockbuster_ctx

    await fill(cdb_db, pings=1000)
    home = tmp_path / "home"
    write_json_store(home)
    settings = backup_settings(home, cdb_db)
    with blockbuster_ctx("clawd") as bb:
        for function in bb.functions.values():
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        manager = BackupManager(settings)
        async with running(manager):
            result = await manager.backup_now("test")
            verified = await run_verify(settings, None)
    assert result.ok, result.error
    assert verified.ok and verified.verification.restore == "ok"


async def test_verify_restore_on_its_own_schedule(tmp_path: Path, cdb_db: PgDatabase) -> None:
    await fill(cdb_db, pings=100)
    settings = backup_settings(tmp_path / "home", cdb_db, schedule="24h", verifyRestore="1s")
    manager = BackupManager(settings, check_seconds=0.2)
    async with running(manager):
        result = await manager.backup_now("test")
        assert result.ok and result.verification is not None
        assert result.verification.restore == "not run"  # not after each backup
        assert result.verification.level == "read-only"

        def restored() -> bool:
            (m,) = read_manifests(backup_dir(settings.home))[0]
            return m.verification is not None and m.verification.restore == "ok"

        await until(restored, timeout=10)


async def test_an_unusable_backup_directory_does_not_stop_the_component(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    (home / "backups").write_text("a file where the directory should be")
    logs = capture_logs()
    manager = BackupManager(backup_settings(home))
    async with running(manager):
        assert manager.status_line().startswith("last backup failed: cannot use")
        result = await manager.backup_now("test")
        assert not result.ok
    assert "level=error event=backup_dir_unusable" in logs.getvalue()
