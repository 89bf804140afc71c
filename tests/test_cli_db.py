"""`clawd db migrate` / `clawd db import-json` in-process, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from helpers_pg import (
    DML_PASSWORD,
    DML_ROLE,
    GRANT_DML,
    SELF_ID,
    connect,
    free_port,
    make_audit,
    make_incident,
    make_instance,
    make_peer,
    make_settings,
    running_repo,
    settings_data,
    table_counts,
)
from pgserver import BasePg, PgDatabase

from clawd.cli.main import main
from clawd.config.settings import PG_ENV_VARS
from clawd.core.model import PeerStatus
from clawd.keep.store.migrations import load_migrations

WRONG_PASSWORD = "Wr0ng-pa55-7f3e"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CLAW_* variable from the caller's shell."""
    for var in [*PG_ENV_VARS, "CLAW_HOME"]:
        monkeypatch.delenv(var, raising=False)


def _write_config(tmp_path: Path, db: PgDatabase, name: str = "config.json", **kwargs: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(settings_data(db, tmp_path / "home", **kwargs), indent=2))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    escaped: str | None = None
    try:
        code = main(list(argv))
    except Exception as exc:
        # `clawd` would die with a traceback here instead of `error: …` and exit 2.
        escaped = f"clawd {' '.join(argv[:2])} raised {exc!r}"
    if escaped is not None:
        pytest.fail(escaped, pytrace=False)
    out, err = capsys.readouterr()
    return code, out, err


def _fill_json_store(db: PgDatabase, home: Path) -> dict[str, int]:
    """A JSON-backend home as a daemon leaves it; returns the expected row counts."""

    async def fill() -> None:
        async with running_repo(make_settings(db, home, backend="json")) as repo:
            for n, gid in enumerate(("gw-a", "gw-b", "gw-c")):
                await repo.upsert_instance(make_instance(gid, n))
            await repo.save_peer_state(make_peer("gw-a", PeerStatus.ONLINE))
            await repo.save_peer_state(make_peer("gw-b", PeerStatus.OFFLINE))
            # online, recovery, ..., and last offline, as gw-b's peer state says.
            for n in (1, 2, 3, 4, 5, 6, 0):
                await repo.record_incident(make_incident("gw-b", n))
            for n in range(4):
                await repo.record_skill_audit(make_audit("gw-c", n))

    asyncio.run(fill())
    return {
        "fleet_instances": 4,  # three peers and this instance
        "peer_status": 3,
        "ping_history": 0,
        # 7 incidents: one is a `recovery` right after an `online` (the fleet's verdict on
        # gw-b was up already), kept as evidence rather than as a row of its own.
        "incident_log": 6,
        "skill_audit": 4,
    }


IN_JSON = {"fleet_instances": 4, "peer_status": 3, "incident_log": 7, "skill_audit": 4}
EVIDENCE_LINE = "1 incident of an event the shared database had already recorded: kept as evidence"


def _assert_clean_error(code: int, out: str, err: str, *prefixes: str) -> str:
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for prefix in prefixes:
        assert prefix in lines[0], lines[0]
    assert lines[0].startswith("error: cannot connect to PostgreSQL at "), lines[0]
    return lines[0]


def test_db_migrate(tmp_path: Path, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path, pg_db)
    code, out, err = _run(capsys, "db", "migrate", "--config", str(config))
    assert code == 0, err
    assert "Traceback" not in err
    target = f"{pg_db.host}:{pg_db.port}/{pg_db.database}"
    every = ", ".join(m.name for m in load_migrations())
    assert f"database {target} is at: 001-initial-schema.sql, 002-idempotency-keys.sql" in out
    assert f"database {target} is at: {every}\n" in out
    assert asyncio.run(table_counts(pg_db)) == dict.fromkeys(
        ("fleet_instances", "peer_status", "ping_history", "incident_log", "skill_audit"), 0
    )
    # Again: nothing to do, same answer.
    code, out2, _ = _run(capsys, "db", "migrate", "--config", str(config))
    assert code == 0
    assert out2 == out


def test_import_json_dry_run_writes_nothing(
    tmp_path: Path, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill_json_store(pg_db, tmp_path / "home")
    config = _write_config(tmp_path, pg_db)
    code, out, err = _run(capsys, "db", "import-json", "--dry-run", "--config", str(config))
    assert code == 0, err
    assert "dry run" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows == {
        "fleet_instances": ["4", "0"],
        "peer_status": ["3", "0"],
        "incident_log": ["7", "0"],
        "skill_audit": ["4", "0"],
    }
    assert set(asyncio.run(table_counts(pg_db)).values()) == {0}


def test_import_json_imports_once(
    tmp_path: Path, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    expected = _fill_json_store(pg_db, home)
    config = _write_config(tmp_path, pg_db)

    for attempt in (1, 2):
        code, out, err = _run(capsys, "db", "import-json", "--config", str(config))
        assert code == 0, err
        assert "Traceback" not in err
        table = [
            line.split()
            for line in out.splitlines()
            if line.split()[:1] != ["imported"] and "evidence" not in line
        ]
        assert table[0] == ["table", "in", "JSON", "before", "after", "check"]
        checks = {row[0]: row[1:] for row in table[1:]}
        before = "0" if attempt == 1 else None
        for name in ("fleet_instances", "peer_status", "incident_log", "skill_audit"):
            in_json, was, after, check = checks[name]
            assert (in_json, after, check) == (str(IN_JSON[name]), str(expected[name]), "ok")
            assert was == (before or str(expected[name]))
        assert EVIDENCE_LINE in out
        assert asyncio.run(table_counts(pg_db)) == expected

    async def check_rows() -> None:
        async with connect(pg_db) as conn:
            peers = await conn.fetch("SELECT gateway_id, status FROM peer_status ORDER BY 1")
            me = await conn.fetchval(
                "SELECT ssh_user FROM fleet_instances WHERE gateway_id = $1", SELF_ID
            )
        assert [(r["gateway_id"], r["status"]) for r in peers] == [
            ("gw-a", "online"),
            ("gw-b", "offline"),
            ("gw-c", "unknown"),
        ]
        assert me == "claw"

    asyncio.run(check_rows())


def test_wrong_password_is_one_clean_line_without_the_password(
    tmp_path: Path, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, pg_db, password=WRONG_PASSWORD)
    for argv in (("db", "migrate"), ("db", "import-json"), ("db", "import-json", "--dry-run")):
        code, out, err = _run(capsys, *argv, "--config", str(config))
        line = _assert_clean_error(code, out, err)
        assert line.startswith(
            f"error: cannot connect to PostgreSQL at 127.0.0.1:{pg_db.port}/{pg_db.database}: "
            "password authentication failed"
        ), line
        assert WRONG_PASSWORD not in out + err
        assert pg_db.password not in out + err


def test_unknown_host(
    tmp_path: Path, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, pg_db, host="no-such-host.invalid")
    code, out, err = _run(capsys, "db", "migrate", "--config", str(config))
    line = _assert_clean_error(code, out, err, "no-such-host.invalid", "unknown host")
    assert pg_db.password not in line


def test_missing_database(
    tmp_path: Path, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, pg_db, database="claw_nowhere")
    code, out, err = _run(capsys, "db", "migrate", "--config", str(config))
    line = _assert_clean_error(code, out, err, f":{pg_db.port}/claw_nowhere:")
    assert "database 'claw_nowhere' does not exist" in line


def test_nothing_listening(
    tmp_path: Path, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    config = _write_config(tmp_path, pg_db, port=port)
    code, out, err = _run(capsys, "db", "migrate", "--config", str(config))
    _assert_clean_error(code, out, err, f"127.0.0.1:{port}/", "connection refused")


def test_claw_pg_pass_overrides_config_password(
    tmp_path: Path,
    pg_db: PgDatabase,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _write_config(tmp_path, pg_db, password=WRONG_PASSWORD)
    code, _, err = _run(capsys, "db", "migrate", "--config", str(config))
    assert code == 2 and "password authentication failed" in err

    monkeypatch.setenv("CLAW_PG_PASS", pg_db.password)
    code, out, err = _run(capsys, "db", "migrate", "--config", str(config))
    assert code == 0, err
    assert "002-idempotency-keys.sql" in out
    assert pg_db.password not in out + err


def test_migrate_without_create_privilege_is_a_clean_error(
    tmp_path: Path, pg_server: BasePg, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role that may not create tables (PostgreSQL 15 grants no CREATE on `public`)."""
    pg_server.create_role(DML_ROLE, DML_PASSWORD)
    config = _write_config(
        tmp_path, dataclasses.replace(pg_db, user=DML_ROLE, password=DML_PASSWORD)
    )
    code, out, err = _run(capsys, "db", "migrate", "--config", str(config))
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "permission denied" in lines[0]
    assert DML_PASSWORD not in out + err


def test_import_json_with_a_role_that_may_only_read_and_write(
    tmp_path: Path, pg_server: BasePg, pg_db: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner ran `db migrate`; the daemon's role only has DML rights (least privilege).

    Nothing is left to create, so importing must work with those rights.
    """
    expected = _fill_json_store(pg_db, tmp_path / "home")
    owner_config = _write_config(tmp_path, pg_db)
    code, _, err = _run(capsys, "db", "migrate", "--config", str(owner_config))
    assert code == 0, err
    pg_server.create_role(DML_ROLE, DML_PASSWORD)

    async def grant() -> None:
        async with connect(pg_db) as conn:
            await conn.execute(GRANT_DML)

    asyncio.run(grant())
    dml = dataclasses.replace(pg_db, user=DML_ROLE, password=DML_PASSWORD)
    dml_config = _write_config(tmp_path, dml, name="dml-config.json")
    code, out, err = _run(capsys, "db", "import-json", "--config", str(dml_config))
    assert code == 0, err
    assert out.count(" ok") == 4, out
    assert asyncio.run(table_counts(pg_db)) == expected
