"""SQL is built only with parameters: a scan of clawd's source, then hostile peer names
through the real daemon, PostgreSQL and the CLI.

Related, not repeated here: tests/test_cli_status.py (hostile names in `clawd status`
from the files), tests/test_history_cli.py (hostile names in `clawd incidents/report`
from rows written directly), tests/test_incidents.py (a hostile name in the journal),
tests/test_discovery.py (hostile mDNS TXT records), tests/test_metrics.py (labels).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from daemonproc import DaemonProcess, run_cli
from pgserver import PgDatabase
from sshpeers import SshFleet, SshPeer

import clawd

SOURCE = Path(clawd.__file__).parent

# Literal text that is SQL (upper-case keywords, as clawd writes its SQL).
SQL_TEXT = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\S+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bCREATE\s+(TEMP\s+)?(TABLE|DATABASE)\b|\bALTER\s+(TABLE|ROLE)\b|\bDROP\s+(TABLE|DATABASE)\b"
    r"|\bWHERE\b"
)

# (file under clawd/, the interpolated expression) -> why it is a constant, never data.
ALLOWED: dict[tuple[str, str], str] = {
    # module constant (history/queries.py): the peers CTE, SQL text with $N parameters only
    ("keep/history/queries.py", "PEERS_CTE"): "module constant",
    # one of pg_store.TABLES, a fixed tuple of the five table names
    ("keep/store/pg_store.py", "t"): "loops over TABLES",
    # existing_keys()/gateway_ids() raise ValueError unless table is in a fixed set
    ("keep/store/pg_store.py", "table"): "checked against a fixed set first",
    # module constant "clawd_ping_stage"
    ("keep/store/pg_store.py", "PING_STAGE"): "module constant",
    # module constant "schema_migrations"
    ("keep/store/migrations.py", "MIGRATIONS_TABLE"): "module constant",
    # the names of TABLES that to_regclass() found: the fixed tuple filtered
    ("act/backup/pgdump.py", "table"): "a member of TABLES",
    # Tally.table: run_batch() raises unless it is in TIMESTAMP_TABLES (fixed)
    ("keep/retention/batches.py", "tally.table"): "checked against TIMESTAMP_TABLES",
    ("keep/retention/batches.py", "self.table"): "a Tally built from the fixed table list",
    # module constant (history/hourly.py): SQL text of the latency segments, no values
    ("keep/history/rollup.py", "hourly.SEGMENTS"): "module constant",
    # "sum(r.latency_hist[1]), …": integer subscripts from range(BUCKETS), a constant
    ("keep/history/queries.py", "sums"): "integer subscripts only",
    # drop_scratch() refuses any name but claw_clan_verify_<hex> (SCRATCH_DB), clawd's own
    ("act/backup/verify.py", "name"): "matches SCRATCH_DB first",
    ("act/backup/verify.py", "force"): "one of two literals",
    # module constant (core/lock_ids.py): the lease sessions' condition, no values
    ("keep/lease.py", "LEASE_SESSIONS"): "module constant",
    ("keep/store/fleet_record.py", "LEASE_SESSIONS"): "module constant",
}


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "literal" assignments (SQL kept in constants)."""
    out: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def _built_sql(tree: ast.Module) -> Iterator[tuple[int, str, list[ast.expr]]]:
    """(line, literal text, interpolated expressions) of every string built from parts."""
    constants = _module_strings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                v.value
                for v in node.values
                if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
            parts = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
            yield node.lineno, text, parts
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
        ):
            base = node.func.value
            if isinstance(base, ast.Constant) and isinstance(base.value, str):
                text = base.value
            elif isinstance(base, ast.Name) and base.id in constants:
                text = constants[base.id]
            else:
                continue
            yield node.lineno, text, [*node.args, *(k.value for k in node.keywords)]
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Mod)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
        ):
            yield node.lineno, node.left.value, [node.right]


def test_sql_is_never_built_from_values() -> None:
    offenders: list[str] = []
    seen: set[tuple[str, str]] = set()
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 50  # the scan really looked at clawd's source
    for path in files:
        rel = path.relative_to(SOURCE).as_posix()
        for line, text, parts in _built_sql(ast.parse(path.read_text(), str(path))):
            if not SQL_TEXT.search(text):
                continue
            for part in parts:
                expr = ast.unparse(part)
                if (rel, expr) in ALLOWED:
                    seen.add((rel, expr))
                else:
                    offenders.append(f"clawd/{rel}:{line}: SQL built with {{{expr}}}")
    assert not offenders, "use $N parameters, not string formatting:\n" + "\n".join(offenders)
    assert seen, "the scan found none of the known constant interpolations"


def test_the_scan_catches_values_in_sql() -> None:
    """The scanner itself: values formatted into SQL are found, parameters are not."""
    bad = ast.parse(
        'Q = "DELETE FROM t WHERE id = {}"\n'
        "a = f\"SELECT * FROM peers WHERE name = '{name}'\"\n"
        'b = Q.format(peer_id)\nc = "UPDATE t SET x = %s" % value\n'
        'd = "SELECT * FROM t WHERE name = $1"\n'
    )
    found = [
        (ast.unparse(p), bool(SQL_TEXT.search(text)))
        for _, text, parts in _built_sql(bad)
        for p in parts
    ]
    assert found == [("name", True), ("peer_id", True), ("value", True)]


# -- hostile names through the daemon ------------------------------------------------

HOSTILE = {
    "gw-drop": "'; DROP TABLE ping_history; --",
    "gw-nl": "name\nwith newline",
    "gw-red": "\x1b[31mred\x1b[0m",
    "gw-bobby": "robert'); DELETE FROM incident_log;--",
}
INTERVAL = 0.3
MISSED = 2


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        peers = {gid: await ssh_fleet.add_peer(f"127.0.6.{n + 2}") for n, gid in enumerate(HOSTILE)}
        (keys / "known_hosts").write_text(ssh_fleet.known_hosts_text())
        yield ssh_fleet, peers


def _config(home: Path, db: PgDatabase, fleet: SshFleet, peers: dict[str, SshPeer]) -> None:
    home.mkdir()
    config = {
        "backend": "postgres",
        "postgres": {
            "host": db.host,
            "port": db.port,
            "database": db.database,
            "user": db.user,
            "password": db.password,
            "poolMin": 1,
            "poolMax": 4,
        },
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 1, "sshUser": "claw"},
        "peers": [
            {
                "name": HOSTILE[gid],
                "gatewayId": gid,
                "ip": p.address,
                "sshPort": p.port,
                "sshUser": "claw",
                "leadNumber": 50,
            }
            for gid, p in peers.items()
        ],
        "ping": {"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25, "offlineAfterMissed": MISSED},
        # Every peer stops at once below; each must get an offline incident of its own
        # (whose details carry the hostile name), not one partition for all.
        "detection": {"partitionMinPeers": 100},
        "ssh": {
            "knownHosts": str(fleet.directory / "known_hosts"),
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.2,
            "reconnectMaxSeconds": 0.5,
        },
        "discovery": {"enabled": False},
        "recovery": {"enabled": False},
        "distribution": {"enabled": False},
        "storage": {"flushIntervalSeconds": 0.05, "retryInitialSeconds": 0.2},
    }
    path = home / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)


def _assert_inert(out: str) -> None:
    """No raw control byte; each hostile name shown escaped, on its own one line."""
    assert "\x1b" not in out
    assert "name\\nwith" in out  # the newline is shown as \n ...
    assert not any(line.startswith("with newline") for line in out.splitlines())  # ... not kept
    assert "\\x1b[31mred" in out
    assert "'; DROP TABLE" in out and "robert')" in out


async def test_hostile_names_are_stored_verbatim_and_printed_inert(
    tmp_path: Path, fleet: tuple[SshFleet, dict[str, SshPeer]], pg_db: PgDatabase
) -> None:
    ssh_fleet, peers = fleet
    home = tmp_path / "home"
    _config(home, pg_db, ssh_fleet, peers)
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        for gid in HOSTILE:
            await daemon.wait_incident(gid, "online", 10)
        for peer in peers.values():
            await peer.stop()
        for gid in HOSTILE:
            await daemon.wait_incident(gid, "offline", INTERVAL * MISSED + 5)
        status = daemon.cli("status")
        live = daemon.cli("status", "--live")
        assert daemon.stop() == 0, daemon.log
    assert "Traceback" not in daemon.log and "\x1b" not in daemon.log

    conn = await asyncpg.connect(pg_db.dsn)
    try:
        names = {
            r[0]: r[1] for r in await conn.fetch("SELECT gateway_id, name FROM fleet_instances")
        }
        assert {g: names[g] for g in HOSTILE} == HOSTILE  # exactly as configured
        tables = {
            r["t"]
            for r in await conn.fetch(
                "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        assert {"ping_history", "incident_log", "fleet_instances", "peer_status"} <= tables
        pings = {
            r[0]: r[1]
            for r in await conn.fetch(
                "SELECT target_gateway, count(*) FROM ping_history GROUP BY 1"
            )
        }
        assert all(pings.get(g, 0) > 0 for g in HOSTILE), pings
        events = await conn.fetch("SELECT gateway_id, event_type FROM incident_log")
        assert {(r["gateway_id"], r["event_type"]) for r in events} >= {
            (g, e) for g in HOSTILE for e in ("online", "offline")
        }
        statuses = {
            r[0]: r[1] for r in await conn.fetch("SELECT gateway_id, status FROM peer_status")
        }
        assert all(statuses[g] == "offline" for g in HOSTILE)
    finally:
        await conn.close()

    for answer in (status, live):
        assert answer.returncode == 0, answer.stderr
        _assert_inert(answer.stdout)
        assert sum("127.0.6." in line for line in answer.stdout.splitlines()) == len(HOSTILE)
    as_json = run_cli(home, "status", "--json")
    by_id = {r["gatewayId"]: r["name"] for r in json.loads(as_json.stdout)["peers"]}
    assert {g: by_id[g] for g in HOSTILE} == HOSTILE  # --json keeps exact values

    incidents = run_cli(home, "incidents", "--since", "1h")
    assert incidents.returncode == 0, incidents.stderr
    _assert_inert(incidents.stdout)
    report = run_cli(home, "report", "--since", "1h")
    assert report.returncode == 0, report.stderr
    _assert_inert(report.stdout)
    csv = run_cli(home, "report", "--since", "1h", "--csv")
    assert csv.returncode == 0 and "\x1b" not in csv.stdout, csv.stderr
