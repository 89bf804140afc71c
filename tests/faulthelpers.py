"""Shared pieces of the fault-injection tests (tests/test_fault_*.py): a daemon config for a
small SSH fleet on 127.0.7.x, checks that the JSON store parses, and PostgreSQL row checks."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from sshpeers import SshFleet, SshPeer

SELF_ID = "gw-fault"


def daemon_config(
    fleet: SshFleet,
    peers: dict[str, SshPeer],
    *,
    interval: float,
    pg: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """config.json for `clawd run` pinging `peers` (gateway id -> server) every `interval`."""
    config: dict[str, Any] = {
        "backend": "postgres" if pg is not None else "json",
        "instance": {"gatewayId": SELF_ID, "name": "fault", "leadNumber": 1, "sshUser": "claw"},
        "peers": [
            {
                "name": gid,
                "gatewayId": gid,
                "ip": p.address,
                "sshPort": p.port,
                "sshUser": "claw",
                "leadNumber": 50,
            }
            for gid, p in peers.items()
        ],
        # The ping timeout must be below the interval (clawd refuses it otherwise).
        "ping": {
            "intervalSeconds": interval,
            "timeoutSeconds": min(0.5, round(interval * 0.8, 3)),
            "offlineAfterMissed": 3,
        },
        "ssh": {
            "knownHosts": str(fleet.directory / "known_hosts"),
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 1,
            "reconnectInitialSeconds": 0.1,
            "reconnectMaxSeconds": 0.5,
        },
        "discovery": {"enabled": False},
        "recovery": {"enabled": False},
        "distribution": {"enabled": False},
        "skills": {"syncInterval": "off"},
        "storage": {
            "flushIntervalSeconds": 0.05,
            "retryInitialSeconds": 0.1,
            "retryMaxSeconds": 0.5,
            "peerFileIntervalSeconds": 0.5,
            **(storage or {}),
        },
    }
    if pg is not None:
        config["postgres"] = pg
    return config


def write_known_hosts(fleet: SshFleet) -> None:
    (fleet.directory / "known_hosts").write_text(fleet.known_hosts_text())


def assert_store_parses(home: Path) -> dict[str, int]:
    """Every JSON file under `home` parses; a .jsonl file may have a torn LAST line only.

    Returns the number of complete lines per .jsonl file."""
    lines_per_file: dict[str, int] = {}
    for path in sorted(home.rglob("*")):
        if not path.is_file() or ".corrupt-" in path.name or path.name.startswith("."):
            continue
        if path.suffix == ".json":
            data = json.loads(path.read_bytes())  # raises on a half-written file
            assert isinstance(data, dict), f"{path}: {type(data).__name__}"
        elif path.suffix == ".jsonl":
            raw = path.read_bytes()
            lines = raw.split(b"\n")
            complete, torn = lines[:-1], lines[-1]
            for n, line in enumerate(complete):
                json.loads(line)  # every complete line parses …
                assert line, f"{path}: empty line {n}"
            # … and a torn last line (no newline, any content) is the only allowed damage:
            # readers skip it (json_store._iter_jsonl); append_durable starts a new line.
            del torn
            lines_per_file[str(path.relative_to(home))] = len(complete)
    return lines_per_file


def incident_keys(home: Path) -> list[str]:
    """client keys of the complete lines of incidents.jsonl."""
    path = home / "incidents.jsonl"
    if not path.exists():
        return []
    raw = path.read_bytes()
    return [json.loads(line)["key"] for line in raw.split(b"\n")[:-1] if line]


async def assert_pg_exactly_once(dsn: str, incident_keys_expected: list[str]) -> dict[str, int]:
    """No duplicate ping or incident rows; each expected incident is there exactly once.

    Returns ping rows per target gateway."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        dup_pings = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT client_key) FROM ping_history"
        )
        null_pings = await conn.fetchval(
            "SELECT count(*) FROM ping_history WHERE client_key IS NULL"
        )
        assert dup_pings == 0 and null_pings == 0, (dup_pings, null_pings)
        rows = await conn.fetch(
            "SELECT client_key::text AS k, count(*) AS n FROM incident_log GROUP BY 1"
        )
        found = {r["k"]: r["n"] for r in rows}
        twice = {k: n for k, n in found.items() if n != 1}
        assert not twice, f"incidents stored more than once: {twice}"
        # A report of an event the fleet had already recorded is evidence only.
        evidence = await conn.fetch("SELECT client_key::text AS k FROM observer_evidence")
        missing = set(incident_keys_expected) - set(found) - {r["k"] for r in evidence}
        assert not missing, f"{len(missing)} of {len(incident_keys_expected)} incidents missing"
        per_peer = await conn.fetch(
            "SELECT target_gateway, count(*) AS n FROM ping_history GROUP BY 1"
        )
        return {r["target_gateway"]: int(r["n"]) for r in per_peer}
    finally:
        await conn.close(timeout=5)


def logged_int(log: str, event: str, key: str) -> int:
    """The integer `key=N` of the last log line containing `event`."""
    lines = [ln for ln in log.splitlines() if event in ln]
    assert lines, f"no {event!r} line in the log"
    match = re.search(rf"\b{key}=(\d+)", lines[-1])
    assert match, f"no {key}= in {lines[-1]!r}"
    return int(match.group(1))


@contextlib.asynccontextmanager
async def three_peers(
    tmp_path: Path, prefix: str, first: int
) -> AsyncIterator[tuple[SshFleet, dict[str, SshPeer]]]:
    """Three SSH peers `<prefix>0..2` on 127.0.7.<first>.. with their keys in known_hosts."""
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        peers = {f"{prefix}{n}": await ssh_fleet.add_peer(f"127.0.7.{first + n}") for n in range(3)}
        write_known_hosts(ssh_fleet)
        yield ssh_fleet, peers
