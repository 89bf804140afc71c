"""Backups of a real PostgreSQL 15 with the real pg_dump/pg_restore: files, manifest,
verification, failures, the lock, and where the password may (not) appear."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_backup import (
    CDB_PASSWORD,
    REAL_BIN,
    FakeBin,
    backup_settings,
    capture_logs,
    cdb_db,
    fill,
    mode,
    scratch_databases,
)
from pgserver import PgDatabase

from clawd.act.backup import manifest as manifests
from clawd.act.backup import names
from clawd.act.backup.pgtools import probe
from clawd.act.backup.reverify import run_verify
from clawd.act.backup.runner import run_backup
from clawd.act.backup.verify import NO_CREATEDB, read_dump

__all__ = ["cdb_db"]


async def test_backup_writes_dump_archive_and_manifest_then_verifies(
    tmp_path: Path, cdb_db: PgDatabase
) -> None:
    expected = await fill(cdb_db)
    logs = capture_logs()
    settings = backup_settings(tmp_path / "home", cdb_db)
    (settings.home / "state.json").write_text('{"sshUser": "claw"}')

    result = await run_backup(settings, "test")

    assert result.ok, result.error
    directory = tmp_path / "home" / "backups"
    stamp = result.stamp
    assert stamp is not None
    dump = directory / names.dump_name(stamp)
    archive = directory / names.json_name(stamp)
    manifest_path = directory / names.manifest_name(stamp)
    for path in (dump, archive, manifest_path):
        assert path.is_file() and mode(path) == 0o600, path
    assert mode(directory) == 0o700
    assert not list(directory.glob("*.partial"))
    assert dump.read_bytes()[:5] == b"PGDMP"  # custom format

    m = await asyncio.to_thread(manifests.read, manifest_path)
    assert m.status == "ok" and m.backend == "postgres"
    assert m.row_counts == expected
    assert m.pg_dump_version and m.pg_dump_version.startswith("15")
    assert m.server_version and m.server_version.startswith("15")
    assert m.compression == "gzip"  # pg_dump 15 has no zstd
    assert m.database == f"{cdb_db.host}:{cdb_db.port}/{cdb_db.database}"
    sizes = {f.kind: f.size for f in m.files}
    assert sizes == {"postgres": dump.stat().st_size, "json": archive.stat().st_size}
    assert m.duration_s > 0
    v = m.verification
    assert v is not None and v.ok
    assert (v.checksum, v.readable, v.restore) == ("ok", "ok", "ok")
    assert v.restored_counts == expected
    assert await scratch_databases(cdb_db) == []  # created, then dropped

    # One success line with file, size and duration.
    done = [ln for ln in logs.getvalue().splitlines() if "event=backup_done" in ln]
    assert len(done) == 1
    assert dump.name in done[0] and "size=" in done[0] and "duration_s=" in done[0]


async def test_without_createdb_the_restore_check_is_skipped_not_failed(
    tmp_path: Path, pg_db: PgDatabase
) -> None:
    await fill(pg_db, pings=10)
    settings = backup_settings(tmp_path / "home", pg_db)
    logs = capture_logs()

    result = await run_backup(settings, "test")

    assert result.ok, result.error
    assert result.verification is not None
    assert result.verification.restore == NO_CREATEDB == "skipped: role lacks CREATEDB"
    assert result.verification.level == "read-only"
    assert "verify-restore skipped: role lacks CREATEDB" in result.summary()
    assert 'restore_check="skipped: role lacks CREATEDB"' in logs.getvalue()


async def test_dump_truncated_to_60_percent_fails_verification(
    tmp_path: Path, cdb_db: PgDatabase
) -> None:
    await fill(cdb_db, pings=50_000)
    settings = backup_settings(tmp_path / "home", cdb_db)
    result = await run_backup(settings, "test")
    assert result.ok and result.stamp
    dump = tmp_path / "home" / "backups" / names.dump_name(result.stamp)
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(dump.read_bytes()[: int(dump.stat().st_size * 0.6)])

    # The premise: the table of contents is at the front, so --list passes...
    listed = subprocess.run(
        [str(REAL_BIN / "pg_restore"), "--list", str(truncated)], capture_output=True, check=False
    )
    assert listed.returncode == 0
    # ...while the full read clawd does fails.
    tools = await probe(None)
    assert (await read_dump(tools, truncated)).startswith("failed: ")

    # Truncated in place: `clawd backup verify` fails and records it.
    os.truncate(dump, int(dump.stat().st_size * 0.6))
    logs = capture_logs()
    verified = await run_verify(settings, dump.name)
    assert not verified.ok and verified.recorded
    assert verified.verification.checksum.startswith("failed: size")
    # Without the manifest's checksum, the full read alone catches it too.
    alone = await run_verify(settings, str(truncated))
    assert not alone.ok and alone.verification.checksum == "no manifest"
    assert alone.verification.readable.startswith("failed: pg_restore")
    m = await asyncio.to_thread(
        manifests.read, tmp_path / "home" / "backups" / names.manifest_name(result.stamp)
    )
    assert m.verification is not None and not m.verification.ok
    assert "level=error event=backup_verify_failed" in logs.getvalue()


async def test_pg_dump_killed_mid_run_leaves_no_final_file(
    tmp_path: Path, cdb_db: PgDatabase
) -> None:
    await fill(cdb_db, pings=300_000)
    fake = FakeBin(tmp_path)
    settings = backup_settings(tmp_path / "home", cdb_db, pgBinDir=str(fake.dir))
    directory = tmp_path / "home" / "backups"
    logs = capture_logs()

    backup = asyncio.create_task(run_backup(settings, "test"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        partials = list(directory.glob("*.dump.partial"))
        if partials and partials[0].stat().st_size > 0 and fake.dumps():
            break
        await asyncio.sleep(0.005)
    else:
        pytest.fail("pg_dump never started writing")
    os.kill(fake.dumps()[0], signal.SIGKILL)
    result = await asyncio.wait_for(backup, 20)

    assert not result.ok
    assert result.error is not None and "pg_dump was killed by SIGKILL" in result.error
    assert not list(directory.glob("*.dump"))
    assert not list(directory.glob("*.partial"))
    failed = (await asyncio.to_thread(manifests.read_all, directory))[0]
    assert [m.status for m in failed] == ["failed"]
    line = next(ln for ln in logs.getvalue().splitlines() if "event=backup_failed" in ln)
    assert "level=error" in line and "SIGKILL" in line


def test_stale_partial_from_a_killed_clawd_is_removed_at_next_start(
    tmp_path: Path, cdb_db: PgDatabase
) -> None:
    """clawd itself dies mid-dump (SIGKILL to its process group): the partial stays
    behind without a final name, and the next start removes it."""
    asyncio.run(fill(cdb_db, pings=100))
    fake = FakeBin(tmp_path, delay=30)
    home = tmp_path / "home"
    settings = backup_settings(home, cdb_db, pgBinDir=str(fake.dir))
    directory = home / "backups"
    script = (
        "import json, sys\n"
        "from clawd.config.load import settings_from_data\n"
        "from clawd.act.backup.commands import backup_now\n"
        "backup_now(settings_from_data(json.loads(sys.argv[1]), environ={}))\n"
    )
    data = settings.model_dump(mode="json", by_alias=True)
    data["postgres"]["password"] = CDB_PASSWORD
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(data)],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not (list(directory.glob("*.dump.partial")) and fake.dumps()):
            assert time.monotonic() < deadline, "the backup never started"
            assert proc.poll() is None
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for pid in fake.dumps():  # pg_dump runs in a process group of its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    assert list(directory.glob("*.dump.partial"))
    assert not list(directory.glob("*.dump"))

    from clawd.act.backup.manager import BackupManager

    async def start() -> None:
        manager = BackupManager(settings)
        ready = asyncio.Event()
        task = asyncio.create_task(manager.run(ready))
        await asyncio.wait_for(ready.wait(), 10)
        manager.stop()
        await asyncio.wait_for(task, 10)

    logs = capture_logs()
    asyncio.run(start())
    assert not list(directory.glob("*.partial"))
    assert "event=backup_stale_file_removed" in logs.getvalue()


async def test_old_pg_dump_is_refused_before_dumping(tmp_path: Path, pg_db: PgDatabase) -> None:
    fake = FakeBin(tmp_path, version="11.22")
    settings = backup_settings(tmp_path / "home", pg_db, pgBinDir=str(fake.dir))

    result = await run_backup(settings, "test")

    assert not result.ok and result.error is not None
    assert "pg_dump 11.22" in result.error
    assert "older than the PostgreSQL 15." in result.error
    assert "apt-get install postgresql-client-15" in result.error
    assert "backup.pgBinDir" in result.error
    assert fake.dumps() == []  # never ran a dump
    assert not list((tmp_path / "home" / "backups").glob("*.dump*"))


async def test_password_only_in_the_environment(tmp_path: Path, cdb_db: PgDatabase) -> None:
    await fill(cdb_db, pings=100)
    fake = FakeBin(tmp_path, delay=0.5)
    settings = backup_settings(tmp_path / "home", cdb_db, pgBinDir=str(fake.dir))
    logs = capture_logs()

    backup = asyncio.create_task(run_backup(settings, "test"))
    deadline = time.monotonic() + 10
    while not fake.dumps():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    pid = fake.dumps()[0]
    # What `ps` shows of the running pg_dump.
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    result = await backup

    assert result.ok, result.error
    assert CDB_PASSWORD not in cmdline
    argv = fake.argv(pid)
    assert argv[0] == "--format=custom" and not any(CDB_PASSWORD in a for a in argv)
    env = fake.env(pid)
    assert env["PGPASSWORD"] == CDB_PASSWORD
    assert (env["PGHOST"], env["PGPORT"], env["PGDATABASE"], env["PGUSER"]) == (
        cdb_db.host,
        str(cdb_db.port),
        cdb_db.database,
        cdb_db.user,
    )
    assert CDB_PASSWORD not in logs.getvalue()
    directory = tmp_path / "home" / "backups"
    for path in directory.iterdir():
        assert CDB_PASSWORD not in path.name
    assert (
        CDB_PASSWORD.encode()
        not in (directory / names.manifest_name(result.stamp or "")).read_bytes()
    )


async def test_failure_names_the_cause_in_one_error_line(tmp_path: Path, pg_db: PgDatabase) -> None:
    settings = backup_settings(tmp_path / "home", pg_db)
    bad = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"database": "no_such_db"})}
    )
    logs = capture_logs()

    result = await run_backup(bad, "test")

    assert not result.ok and result.error is not None
    assert "no_such_db" in result.error and "does not exist" in result.error
    errors = [ln for ln in logs.getvalue().splitlines() if "level=error" in ln]
    assert len(errors) == 1 and "event=backup_failed" in errors[0]
    # The JSON archive of the same run was still taken; the failure is on record.
    (m,) = (await asyncio.to_thread(manifests.read_all, tmp_path / "home" / "backups"))[0]
    assert m.status == "failed" and [f.kind for f in m.files] == ["json"]


async def test_a_second_process_holding_the_lock_keeps_backups_apart(
    tmp_path: Path, pg_db: PgDatabase
) -> None:
    await fill(pg_db, pings=10)
    settings = backup_settings(tmp_path / "home", pg_db, lockWaitSeconds=0.5)
    directory = tmp_path / "home" / "backups"
    directory.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(directory / names.LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[1]))\n",
            "2.0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        refused = await run_backup(settings, "test")
        assert not refused.ok and refused.error is not None
        assert f"(pid {holder.pid})" in refused.error and "another backup" in refused.error
        assert not list(directory.glob("claw_clan_*"))

        # With a longer wait it goes ahead once the other process is done.
        patient = backup_settings(tmp_path / "home", pg_db, lockWaitSeconds=15)
        started = time.monotonic()
        result = await run_backup(patient, "test")
        assert result.ok, result.error
        assert holder.poll() is not None  # it only ran after the holder exited
        assert time.monotonic() - started > 0.5
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
