"""Restore: a dump back into the configured database (all or nothing), a JSON archive
back into the home (current files moved aside), and the refusals that keep it safe."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from helpers_backup import backup_settings, capture_logs, counts, fill, write_json_store
from helpers_pg import connect
from pgserver import PgDatabase

from clawd.act.backup import commands, names
from clawd.act.backup.errors import BackupError
from clawd.act.backup.restore import run_restore
from clawd.act.backup.runner import run_backup
from clawd.keep.store.migrations import load_migrations
from clawd.serve.control import socket_path


async def test_round_trip_puts_the_rows_back(tmp_path: Path, pg_db: PgDatabase) -> None:
    original = await fill(pg_db, pings=5_000)
    settings = backup_settings(tmp_path / "home", pg_db)
    result = await run_backup(settings, "test")
    assert result.ok and result.stamp
    async with connect(pg_db) as conn:
        ids = await conn.fetch("SELECT id, response_ms FROM ping_history ORDER BY id LIMIT 3")
        await conn.execute("DELETE FROM ping_history WHERE id % 2 = 0")
        await conn.execute("UPDATE ping_history SET response_ms = -1")
        await conn.execute("INSERT INTO fleet_instances (gateway_id, name) VALUES ('gw-x', 'x')")
        await conn.execute("DELETE FROM incident_log")
    assert await counts(pg_db) != original

    plans: list[str] = []

    def confirm(plan: str) -> bool:
        plans.append(plan)
        return True

    restored = await run_restore(settings, names.dump_name(result.stamp), confirm)

    assert await counts(pg_db) == original == restored.counts_after == restored.counts_expected
    async with connect(pg_db) as conn:
        again = await conn.fetch("SELECT id, response_ms FROM ping_history ORDER BY id LIMIT 3")
        assert again == ids
        # The schema is whole: the migrations runner's record and the unique keys.
        recorded = await conn.fetchval("SELECT count(*) FROM clawd_schema_migrations")
        assert recorded == len(await asyncio.to_thread(load_migrations))
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'ping_history'")
            >= 3
        )
    (plan,) = plans
    assert pg_db.database in plan and "rows now:" in plan and "ping_history 5000" in plan
    assert restored.counts_before is not None and restored.counts_before["fleet_instances"] == 3


async def test_declined_or_failing_restore_changes_nothing(
    tmp_path: Path, pg_db: PgDatabase
) -> None:
    await fill(pg_db, pings=100)
    settings = backup_settings(tmp_path / "home", pg_db)
    result = await run_backup(settings, "test")
    assert result.ok and result.stamp
    async with connect(pg_db) as conn:
        await conn.execute("DELETE FROM ping_history WHERE id > 50")
    changed = await counts(pg_db)
    name = names.dump_name(result.stamp)

    with pytest.raises(BackupError, match="cancelled; nothing was changed"):
        await run_restore(settings, name, lambda _plan: False)
    assert await counts(pg_db) == changed

    # A damaged file is refused before anything is dropped.
    dump = tmp_path / "home" / "backups" / name
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="sha256 differs"):
        await run_restore(settings, name, None)
    assert await counts(pg_db) == changed

    with pytest.raises(BackupError, match="no such backup file"):
        await run_restore(settings, "claw_clan_20000101_000000.dump", None)


def test_cli_refuses_without_a_terminal_or_while_the_daemon_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    settings = backup_settings(home)
    result = commands.backup_now(settings)
    assert result.ok and result.stamp
    name = names.json_name(result.stamp)

    with pytest.raises(BackupError, match=r"without a terminal.*--yes"):
        commands.restore(settings, name, yes=False, interactive=False)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(socket_path(home)))
        server.listen()
        with pytest.raises(BackupError, match=r"clawd is running .* stop it first"):
            commands.restore(settings, name, yes=True, interactive=False)
    socket_path(home).unlink()

    asked: list[str] = []

    def decline(plan: str) -> bool:
        asked.append(plan)
        return False

    with pytest.raises(BackupError, match="cancelled"):
        commands.restore(settings, name, yes=False, interactive=True, confirm=decline)
    assert "moved aside" in asked[0] and "state.json" in asked[0]


def test_json_archive_round_trip_moves_current_files_aside(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_json_store(home, tag="v1")
    settings = backup_settings(home)
    result = commands.backup_now(settings)
    assert result.ok and result.stamp
    (m,) = result.files
    assert m.kind == "json"
    import tarfile

    with tarfile.open(home / "backups" / m.name) as tar:
        members = sorted(tar.getnames())
    assert members == sorted(
        [
            "config.json",
            "state.json",
            "fleet.json",
            "incidents.jsonl",
            "skill_audit.jsonl",
            "peers",
            "peers/gw-b.json",
        ]
    )  # not the spool, not the backups

    # Life goes on: files change, a peer appears.
    write_json_store(home, tag="v2")
    (home / "peers" / "gw-c.json").write_text("{}")
    logs = capture_logs()

    restored = commands.restore(settings, m.name, yes=True, interactive=False)

    def tag(rel: str) -> str:
        text = (home / rel).read_text().splitlines()[0]
        return str(json.loads(text)["tag"])

    for rel in ("config.json", "state.json", "fleet.json", "peers/gw-b.json", "incidents.jsonl"):
        assert tag(rel) == "v1", rel
    assert not (home / "peers" / "gw-c.json").exists()
    aside = sorted(p.name for p in home.iterdir() if ".pre-restore-" in p.name)
    assert len(aside) == 6 and set(restored.moved_aside) == set(aside)
    peers_aside = next(home / a for a in aside if a.startswith("peers."))
    assert sorted(p.name for p in peers_aside.iterdir()) == ["gw-b.json", "gw-c.json"]
    assert json.loads((peers_aside / "gw-b.json").read_text())["tag"] == "v2"  # kept, not lost
    assert (home / "spool" / "000001.jsonl").exists()  # untouched
    assert "event=restore_done" in logs.getvalue()
    assert not [p for p in home.iterdir() if p.name.startswith(".restore-")]


def test_list_shows_runs_failures_and_strangers(tmp_path: Path, pg_db: PgDatabase) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    asyncio.run(fill(pg_db, pings=10))
    good = commands.backup_now(backup_settings(home, pg_db))
    assert good.ok
    bad_settings = backup_settings(home, pg_db)
    bad_settings = bad_settings.model_copy(
        update={"postgres": bad_settings.postgres.model_copy(update={"port": 1})}
    )
    bad = commands.backup_now(bad_settings)
    assert not bad.ok
    (home / "backups" / "claw_clan_20200101_030000.dump").write_bytes(b"x")

    rows = commands.list_backups(backup_settings(home, pg_db))
    kinds = [(r.kind, r.verified) for r in rows]
    assert kinds == [
        ("json", "read-only"),  # pg_db's role lacks CREATEDB: checksum + full read only
        ("postgres", "read-only"),
        ("failed", "-"),
        ("json", "no"),  # the failed run's archive was still written
        ("postgres", "no manifest"),
    ]
    table = commands.format_list(rows)
    assert table.splitlines()[0].split() == ["FILE", "TIME", "SIZE", "DURATION", "VERIFIED", "KIND"]
    assert "cannot connect to PostgreSQL" in table and "verify-restore skipped" in table
    assert commands.format_backup(good).startswith("backup claw_clan_")
    verified = commands.verify(backup_settings(home, pg_db), None)
    assert verified.ok and verified.stamp == good.stamp
    assert "restore:   skipped: role lacks CREATEDB" in commands.format_verify(verified)
