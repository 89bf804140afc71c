"""Switching `backend` between json and postgres and back: additive, nothing lost, nothing twice."""

from __future__ import annotations

import json
from pathlib import Path

from helpers_pg import (
    SELF_ID,
    assert_keys_exactly_once,
    connect,
    make_audit,
    make_incident,
    make_instance,
    make_peer,
    make_settings,
    running_repo,
    table_counts,
    wait_delivered,
)
from pgserver import PgDatabase

from clawd.core.model import Incident, PeerStatus


def _jsonl_keys(path: Path) -> list[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines()]


def _peer_file(home: Path, gateway_id: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((home / "peers" / f"{gateway_id}.json").read_text())
    return data


async def _pg_peers(db: PgDatabase) -> dict[str, str]:
    async with connect(db) as conn:
        rows = await conn.fetch("SELECT gateway_id, status FROM peer_status")
    return {r["gateway_id"]: r["status"] for r in rows}


async def test_json_to_postgres_to_json_and_back(pg_db: PgDatabase, tmp_path: Path) -> None:
    home = tmp_path / "home"
    as_json = make_settings(pg_db, home, backend="json")
    as_pg = make_settings(pg_db, home, backend="postgres")
    incidents: list[Incident] = []

    # 1. JSON backend: peers and incidents recorded in files only.
    audits = [make_audit("gw-a", n) for n in range(2)]
    async with running_repo(as_json) as repo:
        assert repo.sink is None
        await repo.upsert_instance(make_instance("gw-a", 1))
        await repo.upsert_instance(make_instance("gw-b", 2))
        await repo.save_peer_state(make_peer("gw-a", PeerStatus.ONLINE))
        await repo.save_peer_state(make_peer("gw-b", PeerStatus.OFFLINE))
        await repo.save_peer_state(make_peer("gw-c", PeerStatus.UNRESPONSIVE))  # no identity
        for n in (1, 0, 3):  # online, offline (as its state says), reinstall
            incidents.append(make_incident("gw-b", n))
            await repo.record_incident(incidents[-1])
        for audit in audits:
            await repo.record_skill_audit(audit)
        await repo.set_leader(SELF_ID)
    async with connect(pg_db) as conn:
        assert await conn.fetchval("SELECT to_regclass('fleet_instances')") is None

    # 2. Switch to postgres: what the JSON files hold arrives in PostgreSQL.
    async with running_repo(as_pg) as repo:
        await wait_delivered(repo)
        pg_mode_incident = make_incident("gw-a", 3)
        incidents.append(pg_mode_incident)
        await repo.record_incident(pg_mode_incident)
        await wait_delivered(repo)
    async with connect(pg_db) as conn:
        rows = await conn.fetch("SELECT gateway_id, name, ip FROM fleet_instances ORDER BY 1")
        assert [(r["gateway_id"], r["name"], r["ip"]) for r in rows] == [
            ("gw-a", "node-gw-a", "10.0.0.11"),
            ("gw-b", "node-gw-b", "10.0.0.12"),
            ("gw-c", "gw-c", None),
            (SELF_ID, "self-node", "127.0.0.1"),
        ]
        await assert_keys_exactly_once(conn, "incident_log", [i.key for i in incidents])
        await assert_keys_exactly_once(conn, "skill_audit", [a.key for a in audits])
    assert await _pg_peers(pg_db) == {"gw-a": "online", "gw-b": "offline", "gw-c": "unresponsive"}
    # The JSON files were kept up to date in postgres mode too.
    assert _jsonl_keys(home / "incidents.jsonl") == [str(i.key) for i in incidents]

    # 3. Back to JSON: the files still hold everything; new writes go to the files.
    async with running_repo(as_json) as repo:
        snap = repo.snapshot()
        assert set(snap.instances) == {SELF_ID, "gw-a", "gw-b", "gw-c"}
        assert {g: s.status.value for g, s in snap.peers.items()} == {
            "gw-a": "online",
            "gw-b": "offline",
            "gw-c": "unresponsive",
        }
        assert snap.leader == SELF_ID
        json_mode = [make_incident("gw-a", n) for n in range(4, 7)]
        for inc in json_mode:
            await repo.record_incident(inc)
        incidents.extend(json_mode)
        await repo.save_peer_state(make_peer("gw-a", PeerStatus.OFFLINE))
    assert _jsonl_keys(home / "incidents.jsonl") == [str(i.key) for i in incidents]
    assert _peer_file(home, "gw-a")["status"] == "offline"
    assert _peer_file(home, "gw-b")["status"] == "offline"
    assert (await table_counts(pg_db))["incident_log"] == 4  # json mode left PostgreSQL alone

    # 4. Postgres again: the json-mode writes arrive too, nothing is duplicated.
    async with running_repo(as_pg) as repo:
        await wait_delivered(repo)
    async with connect(pg_db) as conn:
        await assert_keys_exactly_once(conn, "incident_log", [i.key for i in incidents])
        await assert_keys_exactly_once(conn, "skill_audit", [a.key for a in audits])
        assert await conn.fetchval("SELECT count(*) FROM fleet_instances") == 4
    assert await _pg_peers(pg_db) == {"gw-a": "offline", "gw-b": "offline", "gw-c": "unresponsive"}
    assert _jsonl_keys(home / "incidents.jsonl") == [str(i.key) for i in incidents]


async def test_switch_with_a_long_json_history(pg_db: PgDatabase, tmp_path: Path) -> None:
    """A JSON-only fleet with thousands of incidents: all of them reach PostgreSQL, once."""
    home = tmp_path / "home"
    incidents = [make_incident(f"gw-{n % 7}", n) for n in range(2500)]
    async with running_repo(make_settings(pg_db, home, backend="json")) as repo:
        for inc in incidents:
            await repo.record_incident(inc)
    for _ in range(2):  # switching twice changes nothing
        async with running_repo(make_settings(pg_db, home)) as repo:
            await wait_delivered(repo)
        async with connect(pg_db) as conn:
            await assert_keys_exactly_once(conn, "incident_log", [i.key for i in incidents])


async def test_incident_after_a_torn_history_line_is_not_lost(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    """Power loss mid-append leaves a torn last line in incidents.jsonl. The next incident,
    recorded after the restart, must stay readable and reach PostgreSQL after the switch."""
    home = tmp_path / "home"
    as_json = make_settings(pg_db, home, backend="json")
    before = [make_incident("gw-a", n) for n in range(3)]
    async with running_repo(as_json) as repo:
        for inc in before:
            await repo.record_incident(inc)
    path = home / "incidents.jsonl"
    path.write_bytes(path.read_bytes()[:-25])  # the last append was cut short
    after = make_incident("gw-b", 10)
    async with running_repo(as_json) as repo:
        await repo.record_incident(after)

    async with running_repo(make_settings(pg_db, home)) as repo:
        await wait_delivered(repo)
    async with connect(pg_db) as conn:
        keys = {r["client_key"] for r in await conn.fetch("SELECT client_key FROM incident_log")}
    assert {before[0].key, before[1].key} <= keys
    assert after.key in keys, "the first incident recorded after the crash was lost"
