"""`clawd incidents` / `clawd report` in-process against a real PostgreSQL, with figures
computed by hand from a small history (see clawd/keep/history/report.py for the definition)."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers_pg import connect, free_port, settings_data
from pgserver import BasePg, PgDatabase

from clawd.cli.main import main
from clawd.config.settings import PG_ENV_VARS
from clawd.keep.history import collect
from clawd.keep.history.rollup import RollupMaintainer
from clawd.keep.retention.dbjob import LeaderDb
from clawd.keep.store.migrations import migrate

T0 = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
WINDOW = ["--from", "2024-05-01T00:00:00Z", "--to", "2024-05-01T01:00:00Z"]
HOSTILE = "evil\x1b[31m\nname"

# (target, seconds after T0, success, response_ms)
PINGS: list[tuple[str, float, bool, int | None]] = [
    ("gw-a", -5, True, 999),  # before the window
    ("gw-a", 0, True, 10),
    ("gw-a", 10, True, 20),
    ("gw-a", 20, False, None),
    ("gw-a", 30, False, None),
    ("gw-a", 40, True, 30),
    ("gw-a", 50, True, 40),
    ("gw-a", 500, True, 50),  # after a 450 s gap: capped at 3 x median gap
    ("gw-a", 510, False, None),
    ("gw-a", 3590, True, 60),  # after a 3080 s gap; holds until T1
    ("gw-a", 3600, True, 1),  # at T1: outside the half-open window
    ("gw-b", 0, True, 5),
    ("gw-b", 100, True, 7),
    ("gw-b", 200, True, 9),  # holds 3400 s until T1, capped at 300
    ("gw-c", 60, False, None),  # a single ping: nothing observed
]

# (gateway, seconds after T0, event, details)
INCIDENTS: list[tuple[str, float, str, Any]] = [
    ("gw-a", -100, "offline", {"missedPings": 3}),  # before the window
    ("gw-a", 20, "offline", {"missedPings": 3}),
    ("gw-a", 40, "recovery", {"downtimeSeconds": 20}),
    ("gw-b", 100, "leader_change", {"old": "x\ny", "new": "\x1b[2Jz"}),
    ("gw-c", 3600, "online", None),  # at T1: outside
]

# The window is one whole hour, so its one piece's median is the window's median.
# gw-a: gaps 10,10,10,10,10,450,10,3080 -> median 10, cap 30.
#   up: 10+10+10+min(450,30)+10 + last 10 = 80; down: 10+10+min(3080,30) = 50.
#   Latencies 10 20 30 40 50 60: p50 = 3rd = 30, bucket (25, 32] -> 32; p95 = 6th = 60,
#   bucket (50, 63] -> 63, above the max -> 60.
# gw-b: gaps 100,100 -> cap 300; up 100+100+min(3400,300) = 500 of 500.
#   Latencies 5 7 9: p50 = 2nd = 7, bucket (6, 8] -> 8; p95 = 9, bucket (8, 10] -> max 9.
EXPECTED: dict[str, dict[str, Any]] = {
    "gw-a": {
        "name": "alpha",
        "pings": 9,
        "successes": 6,
        "successPct": 66.667,
        "availabilityPct": 61.538,
        "observedSeconds": 130.0,
        "upSeconds": 80.0,
        "medianGapSeconds": 10.0,
        "responseP50Ms": 32,
        "responseP95Ms": 60,
        "responseMaxMs": 60,
        "incidents": {"offline": 1, "recovery": 1},
    },
    "gw-b": {
        "name": HOSTILE,
        "pings": 3,
        "successes": 3,
        "successPct": 100.0,
        "availabilityPct": 100.0,
        "observedSeconds": 500.0,
        "upSeconds": 500.0,
        "medianGapSeconds": 100.0,
        "responseP50Ms": 8,
        "responseP95Ms": 9,
        "responseMaxMs": 9,
        "incidents": {"leader_change": 1},
    },
    "gw-c": {
        "name": None,
        "pings": 1,
        "successes": 0,
        "successPct": 0.0,
        "availabilityPct": None,
        "observedSeconds": 0.0,
        "upSeconds": 0.0,
        "medianGapSeconds": None,
        "responseP50Ms": None,
        "responseP95Ms": None,
        "responseMaxMs": None,
        "incidents": {},
    },
}


# Before migration 004 (the exact path): the same spans; percentile_disc exactly.
EXPECTED_EXACT: dict[str, dict[str, Any]] = {
    "gw-a": {**EXPECTED["gw-a"], "responseP50Ms": 30},
    "gw-b": {**EXPECTED["gw-b"], "responseP50Ms": 7},
    "gw-c": EXPECTED["gw-c"],
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [*PG_ENV_VARS, "CLAW_HOME"]:
        monkeypatch.delenv(var, raising=False)


def _config(tmp_path: Path, db: PgDatabase, **kwargs: Any) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(settings_data(db, tmp_path / "home", **kwargs)))
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _fill(db: PgDatabase, incidents_at: datetime = T0) -> None:
    async with connect(db) as conn:
        await migrate(conn)
        await conn.executemany(
            "INSERT INTO fleet_instances (gateway_id, name) VALUES ($1, $2)",
            [("gw-a", "alpha"), ("gw-b", HOSTILE)],
        )
        await conn.executemany(
            'INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp",'
            " response_ms) VALUES ('gw-self', $1, $2, $3, $4)",
            [(g, ok, T0 + timedelta(seconds=s), ms) for g, s, ok, ms in PINGS],
        )
        await conn.executemany(
            'INSERT INTO incident_log (gateway_id, event_type, details, "timestamp")'
            " VALUES ($1, $2, $3::jsonb, $4)",
            [
                (g, e, None if d is None else json.dumps(d), incidents_at + timedelta(seconds=s))
                for g, s, e, d in INCIDENTS
            ],
        )
        # Roll every hour up, as the leader's RollupMaintainer does: reports then take
        # the rollup path (before any roll they take the exact one).
        rolled = await RollupMaintainer(LeaderDb(lambda: connect(db), lambda: True)).roll_once(
            T1 + timedelta(days=1)
        )
        assert rolled.skipped is None and rolled.hours > 0


@pytest.fixture
def filled(pg_db: PgDatabase, tmp_path: Path) -> str:
    asyncio.run(_fill(pg_db))
    return _config(tmp_path, pg_db)


def _peers(out: str) -> dict[str, dict[str, Any]]:
    doc = json.loads(out)
    return {p.pop("gatewayId"): p for p in doc["peers"]}


def test_report_json_matches_hand_computed_figures(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "report", *WINDOW, "--json", "--config", filled)
    assert code == 0, err
    assert _peers(out) == EXPECTED
    doc = json.loads(out)
    assert (doc["from"], doc["to"]) == (T0.isoformat(), T1.isoformat())


def test_report_is_exact_when_the_sampled_floor_is_too_high(
    filled: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The exact path (no rollup): 1,000 s is above gw-a's cap (30 s), so the first pass
    # misses spans and the second is exact.
    async def no_rollup(_conn: object) -> bool:
        return False

    monkeypatch.setattr(collect.queries, "rollup_ready", no_rollup)
    monkeypatch.setattr(collect, "floor_from_sample", lambda _medians: 1000.0)
    code, out, err = _run(capsys, "report", *WINDOW, "--json", "--config", filled)
    assert code == 0, err
    assert _peers(out) == EXPECTED_EXACT


def test_report_one_gateway(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "report", *WINDOW, "--gateway", "gw-a", "--json", "--config", filled
    )
    assert code == 0, err
    assert _peers(out) == {"gw-a": EXPECTED["gw-a"]}


def test_report_csv_parses(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "report", *WINDOW, "--csv", "--config", filled)
    assert code == 0, err
    assert "\x1b" not in out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["gatewayId"] for r in rows] == ["gw-a", "gw-b", "gw-c"]
    a = rows[0]
    assert (a["pings"], a["availabilityPct"], a["responseP95Ms"]) == ("9", "61.538", "60")
    assert a["incidents"] == "offline=1;recovery=1"
    assert rows[1]["name"] == "evil\\x1b[31m\\nname"
    assert rows[2]["availabilityPct"] == ""


def test_report_table_is_inert(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "report", *WINDOW, "--config", filled)
    assert code == 0, err
    assert "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 5  # heading, header, three peers
    assert lines[2].split()[:5] == ["alpha", "gw-a", "9", "66.67", "61.54"]
    assert "offline=1 recovery=1" in lines[2]


def test_incidents_from_to_json(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "incidents", *WINDOW, "--json", "--config", filled)
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["gatewayId"], r["eventType"]) for r in rows] == [
        ("gw-a", "offline"),
        ("gw-a", "recovery"),
        ("gw-b", "leader_change"),
    ]
    assert rows[1] == {
        "id": rows[1]["id"],
        "timestamp": (T0 + timedelta(seconds=40)).isoformat(),
        "gatewayId": "gw-a",
        "name": "alpha",
        "eventType": "recovery",
        "details": {"downtimeSeconds": 20},
    }
    assert rows[2]["details"] == {"old": "x\ny", "new": "\x1b[2Jz"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--gateway", "gw-a"], [("gw-a", "offline"), ("gw-a", "recovery")]),
        (["--type", "offline"], [("gw-a", "offline")]),
        (["--gateway", "gw-b", "--type", "offline"], []),
        (["--limit", "2"], [("gw-a", "recovery"), ("gw-b", "leader_change")]),
    ],
)
def test_incidents_filters(
    filled: str,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: list[tuple[str, str]],
) -> None:
    code, out, err = _run(capsys, "incidents", *WINDOW, *extra, "--json", "--config", filled)
    assert code == 0, err
    assert [(r["gatewayId"], r["eventType"]) for r in json.loads(out)] == expected


def test_incidents_since_and_default(
    pg_db: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same incidents, shifted so that T0 is 2 hours ago: only those in the last 24 h
    # (the default) and the last 1 h 59 m (those at T0 + 60 s and later) count.
    asyncio.run(_fill(pg_db, incidents_at=datetime.now(UTC) - timedelta(hours=2)))
    config = _config(tmp_path, pg_db)
    capsys.readouterr()  # the migrations' log lines
    code, out, _ = _run(capsys, "incidents", "--json", "--config", config)
    assert code == 0
    assert [r["eventType"] for r in json.loads(out)] == [
        "offline",
        "offline",
        "recovery",
        "leader_change",
        "online",
    ]
    code, out, _ = _run(capsys, "incidents", "--since", "1h59m", "--json", "--config", config)
    assert [r["eventType"] for r in json.loads(out)] == ["leader_change", "online"]


def test_incidents_table_is_one_inert_line_each(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "incidents", *WINDOW, "--config", filled)
    assert code == 0, err
    assert "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 5  # heading, header, three incidents
    assert lines[1].split() == ["TIME", "GATEWAY", "NAME", "EVENT", "DETAILS"]
    assert "downtimeSeconds=20" in lines[3]
    assert "new=\\x1b[2Jz old=x\\ny" in lines[4]  # jsonb orders keys by length
    assert re.match(r"2024-05-01 \d\d:\d\d:\d\d [+-]\d{4}  gw-a", lines[2])


@pytest.mark.parametrize("command", ["incidents", "report"])
def test_json_backend_is_a_clear_error(
    pg_db: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    config = _config(tmp_path, pg_db, backend="json")
    code, out, err = _run(capsys, command, "--config", config)
    assert code == 2
    assert out == ""
    assert err == (
        'error: history needs the PostgreSQL backend: set "backend": "postgres" in '
        'config.json (see README "Switching backends")\n'
    )


def test_unreachable_database_is_one_line(
    pg_db: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, pg_db, port=free_port())
    code, out, err = _run(capsys, "report", "--config", config)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:")
    assert pg_db.password not in err


def test_empty_schema_says_to_migrate(
    pg_db: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "report", "--config", _config(tmp_path, pg_db))
    assert code == 2
    assert "run `clawd db migrate`" in err.splitlines()[-1]


REPORT_ROLE, REPORT_PASSWORD = "clawd_report", "report-test-pw-9d2e"


def test_a_select_only_role_can_report_before_the_index_migration(
    pg_server: BasePg, pg_db: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """History commands never migrate: a reporting role without DDL rights works, and is
    told (on stderr) when migration 003's index is missing."""
    asyncio.run(_fill(pg_db))
    pg_server.create_role(REPORT_ROLE, REPORT_PASSWORD)

    async def prepare() -> None:
        async with connect(pg_db) as conn:
            await conn.execute("DROP INDEX idx_ping_history_target_ts_cover")
            await conn.execute(
                "DELETE FROM clawd_schema_migrations WHERE name = '003-history-indexes.sql'"
            )
            await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {REPORT_ROLE}")

    asyncio.run(prepare())
    capsys.readouterr()
    reader = dataclasses.replace(pg_db, user=REPORT_ROLE, password=REPORT_PASSWORD)
    code, out, err = _run(
        capsys, "report", *WINDOW, "--json", "--config", _config(tmp_path, reader)
    )
    assert code == 0, err
    assert _peers(out) == EXPECTED
    assert err.startswith("note: migration 003-history-indexes.sql is not applied")


def test_a_select_only_role_before_the_rollup_migration_gets_the_exact_path(
    pg_server: BasePg, pg_db: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without migration 004's tables the report falls back to the whole-window path."""
    asyncio.run(_fill(pg_db))
    pg_server.create_role(REPORT_ROLE, REPORT_PASSWORD)

    async def prepare() -> None:
        async with connect(pg_db) as conn:
            await conn.execute("DROP TABLE ping_rollup_hourly, ping_rollup_state")
            await conn.execute("DROP AGGREGATE clawd_latency_hist(INT, INT)")
            await conn.execute(
                "DELETE FROM clawd_schema_migrations WHERE name = '004-ping-rollup.sql'"
            )
            await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {REPORT_ROLE}")

    asyncio.run(prepare())
    capsys.readouterr()
    reader = dataclasses.replace(pg_db, user=REPORT_ROLE, password=REPORT_PASSWORD)
    code, out, err = _run(
        capsys, "report", *WINDOW, "--json", "--config", _config(tmp_path, reader)
    )
    assert code == 0, err
    assert _peers(out) == EXPECTED_EXACT
    assert err.startswith("note: migration 004-ping-rollup.sql is not applied")
