"""Rotation: old runs go, the newest keep_min verified runs stay whatever their age,
files clawd did not write are never touched, and failed runs never cost a good backup."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

from blocking import setup_may_block
from helpers_backup import backup_settings, write_json_store
from pgserver import PgDatabase

from clawd.act.backup import manifest as manifests
from clawd.act.backup import names, rotation
from clawd.act.backup.manifest import FileEntry, Manifest, Verification
from clawd.act.backup.runner import run_backup
from clawd.core.model import utcnow

FOREIGN = (
    "claw_clan_20250101.sql.gz",  # the seed's cron job
    "claw_clan_20200101_030000.dump",  # our naming, but no manifest names it
    "notes.txt",
    "clawboard-prod-20200101-000000.sql.gz",
)


@setup_may_block
def fake_run(
    directory: Path, days_old: float, *, verified: bool | None = True, status: str = "ok"
) -> Manifest:
    """An aged run on disk: dump + archive + manifest (verified True/False/None)."""
    created = utcnow() - timedelta(days=days_old)
    stamp = names.stamp_of(created)
    files: list[FileEntry] = []
    if status == "ok":
        for name, kind in ((names.dump_name(stamp), "postgres"), (names.json_name(stamp), "json")):
            (directory / name).write_bytes(b"x")
            files.append(FileEntry(name, kind, 1, "0" * 64))  # type: ignore[arg-type]
    verification = None
    if verified is not None:
        verification = Verification(ok=verified, at=created.isoformat())
    m = Manifest(
        stamp=stamp,
        created_at=created.isoformat(),
        status=status,  # type: ignore[arg-type]
        source="test",
        backend="postgres",
        duration_s=1.0,
        files=tuple(files),
        verification=verification,
        error="boom" if status == "failed" else None,
    )
    manifests.write(directory, m)
    return m


def on_disk(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith(".")}


def test_plan_keeps_newest_verified_whatever_their_age(tmp_path: Path) -> None:
    now = utcnow()
    d = tmp_path
    runs = [
        fake_run(d, 100, verified=True),
        fake_run(d, 90, verified=True),
        fake_run(d, 80, verified=True),
        fake_run(d, 70, verified=True),
        fake_run(d, 60, verified=False),  # newer, but failed verification: not kept
        fake_run(d, 50, verified=True, status="failed"),
        fake_run(d, 2, verified=True),
    ]
    doomed = {m.stamp for m in rotation.plan(runs, now, retention_days=30, keep_min=3)}
    # Kept: the 2-day-old one (young) and the two newest old verified ones (keep_min=3).
    assert doomed == {runs[0].stamp, runs[1].stamp, runs[4].stamp, runs[5].stamp}


def test_plan_fills_keep_min_with_never_verified_runs_not_failed_ones() -> None:
    def m(days: float, verification: Verification | None) -> Manifest:
        created: datetime = utcnow() - timedelta(days=days)
        return Manifest(
            stamp=names.stamp_of(created),
            created_at=created.isoformat(),
            status="ok",
            source="t",
            backend="json",
            duration_s=0,
            verification=verification,
        )

    bad = Verification(ok=False, at="x")
    runs = [m(40, None), m(39, bad), m(38, None)]
    doomed = rotation.plan(runs, utcnow(), retention_days=30, keep_min=2)
    assert [x.stamp for x in doomed] == [runs[1].stamp]


def test_apply_deletes_only_what_manifests_name(tmp_path: Path) -> None:
    d = tmp_path
    for name in FOREIGN:
        (d / name).write_text("not clawd's")
    old = fake_run(d, 100)
    # A manifest naming a file outside its own run (tampered) is not obeyed for that file.
    tampered = Manifest(
        stamp=old.stamp,
        created_at=old.created_at,
        status="ok",
        source="t",
        backend="postgres",
        duration_s=0,
        files=(*old.files, FileEntry("notes.txt", "json", 1, "0" * 64)),
    )
    deleted = rotation.apply(d, [tampered])
    assert set(deleted) == {f.name for f in old.files} | {old.name}
    assert on_disk(d) == set(FOREIGN)


async def test_failed_runs_never_cost_a_good_backup_and_success_rotates(
    tmp_path: Path, pg_db: PgDatabase
) -> None:
    home = tmp_path / "home"
    write_json_store(home)
    directory = home / "backups"
    directory.mkdir(parents=True)
    for name in FOREIGN:
        (directory / name).write_text("not clawd's")
    good = [fake_run(directory, days, verified=True) for days in (200, 150, 100, 45)]
    young = fake_run(directory, 1, verified=False)
    before = on_disk(directory)

    # Five failed runs in a row (PostgreSQL unreachable): nothing is rotated away.
    failing = backup_settings(home, pg_db, keepMin=2, retentionDays=30)
    failing = failing.model_copy(
        update={"postgres": failing.postgres.model_copy(update={"port": 1})}
    )
    for _ in range(5):
        result = await run_backup(failing, "test")
        assert not result.ok and result.rotated == ()
    assert before <= on_disk(directory)
    found, _ = await asyncio.to_thread(manifests.read_all, directory)
    assert sum(m.status == "failed" for m in found) == 5

    # A success (JSON backend) rotates: the newest two verified runs stay (the new one
    # and the 45-day-old one), the young unverified one stays by age, foreign files stay.
    ok = await run_backup(backup_settings(home, keepMin=2, retentionDays=30), "test")
    assert ok.ok and ok.verification is not None and ok.verification.ok
    left = on_disk(directory)
    assert set(FOREIGN) <= left
    for m in good[:3]:
        assert m.name not in left and not any(f.name in left for f in m.files)
    for m in (good[3], young):
        assert m.name in left and all(f.name in left for f in m.files)
    assert names.manifest_name(ok.stamp or "") in left
    assert set(ok.rotated) == {n for m in good[:3] for n in (m.name, *(f.name for f in m.files))}
