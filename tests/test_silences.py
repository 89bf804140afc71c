"""Issue 16: `clawd silence add|list|remove`, on JSON (a file) and PostgreSQL (a table),
and what a silence covers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pgserver import PgDatabase

from clawd.core.model import EventType, Incident
from clawd.serve.alerts.silences import Silence, silencing

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def clawd(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", *args],
        env=dict(os.environ, CLAW_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def home_with(tmp_path: Path, config: dict[str, Any]) -> Path:
    home = tmp_path / "home"
    home.mkdir(parents=True)
    (home / "config.json").write_text(json.dumps({"instance": {"gatewayId": "gw-a"}, **config}))
    (home / "config.json").chmod(0o600)
    return home


def test_a_silence_covers_its_machine_its_partitions_and_its_time_only() -> None:
    one = Silence("s-1", "m5", T0, T0 + timedelta(hours=2), "reboot", "ops@a", T0)
    everyone = Silence("s-2", None, T0 + timedelta(hours=1), T0 + timedelta(hours=3), "", "", T0)

    def at(hours: float, gateway: str = "m5", **details: Any) -> Incident:
        return Incident(gateway, EventType.OFFLINE, details, T0 + timedelta(hours=hours))

    assert one.covers(at(0.5)) and not one.covers(at(0.5, "m4"))
    assert not one.covers(at(2)) and not one.covers(at(-0.1))  # [starts, ends)
    assert one.covers(at(0.5, "m1", members=["m5", "m6"]))  # a partition m5 is part of
    assert silencing([one, everyone], at(1.5)) is everyone  # the one ending last
    assert silencing([one, everyone], at(0.5, "m4")) is None


def test_silences_on_json_are_a_file_of_this_machine(tmp_path: Path) -> None:
    home = home_with(tmp_path, {})
    added = clawd(home, "silence", "add", "m5", "--for", "2h", "--reason", "kernel update")
    assert added.returncode == 0, added.stderr
    silence_id = added.stdout.split(":")[0]
    assert "m5 silenced on this machine until" in added.stdout
    assert oct((home / "silences.json").stat().st_mode & 0o777) == "0o600"
    listed = clawd(home, "silence", "list", "--json")
    (shown,) = json.loads(listed.stdout)["silences"]
    assert (shown["id"], shown["gateway"], shown["reason"]) == (silence_id, "m5", "kernel update")
    ends = datetime.fromisoformat(shown["ends"]) - datetime.fromisoformat(shown["starts"])
    assert ends == timedelta(hours=2)
    table = clawd(home, "silence", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "MACHINE", "FROM", "UNTIL"]
    assert table[1].startswith(silence_id) and table[1].endswith("kernel update")

    assert clawd(home, "silence", "remove", silence_id).returncode == 0
    assert clawd(home, "silence", "list").stdout.strip() == "no silences"
    gone = clawd(home, "silence", "remove", silence_id)
    assert gone.returncode == 2
    assert (
        gone.stderr.strip() == f"error: no active silence '{silence_id}' (see `clawd silence list`)"
    )


def test_a_wrong_silence_is_one_line_naming_what_is_allowed(tmp_path: Path) -> None:
    home = home_with(tmp_path, {})
    cases = {
        ("m5", "--all", "--for", "1h"): "name one machine (GATEWAY) or --all, not both or neither",
        ("--for", "1h"): "name one machine (GATEWAY) or --all, not both or neither",
        ("m5",): "say how long: either --for DURATION or --until TIME",
        ("m5", "--for", "1h", "--until", "2030-01-01"): "either --for DURATION or --until TIME",
        ("m5", "--for", "soon"): "--for: 'soon' is not a schedule",
        ("m5", "--until", "2001-01-01"): "--until 2001-01-01: that is in the past",
        ("m5", "--for", "400d"): "at most 366 days",
    }
    for args, wanted in cases.items():
        done = clawd(home, "silence", "add", *args, "--reason", "x")
        assert done.returncode == 2, (args, done.stdout)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert wanted in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (home / "silences.json").exists()


def test_silences_on_postgres_are_the_fleets(tmp_path: Path, pg_db: PgDatabase) -> None:
    postgres = {
        "host": pg_db.host,
        "port": pg_db.port,
        "database": pg_db.database,
        "user": pg_db.user,
        "password": pg_db.password,
    }
    one = home_with(tmp_path / "one", {"backend": "postgres", "postgres": postgres})
    other = home_with(tmp_path / "other", {"backend": "postgres", "postgres": postgres})
    added = clawd(one, "silence", "add", "--all", "--for", "30m", "--reason", "switch swap")
    assert added.returncode == 0, added.stderr
    assert "every machine silenced fleet-wide until" in added.stdout
    silence_id = added.stdout.split(":")[0]
    listed = json.loads(clawd(other, "silence", "list", "--json").stdout)["silences"]
    assert [(s["id"], s["gateway"]) for s in listed] == [(silence_id, None)]
    assert pg_db.password not in added.stdout + added.stderr
    assert clawd(other, "silence", "remove", silence_id).returncode == 0
    assert clawd(one, "silence", "list").stdout.strip() == "no silences"
