"""PgStore.apply against a real PostgreSQL: everything lands once, replays add nothing."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers_pg import (
    DML_PASSWORD,
    DML_ROLE,
    GRANT_DML,
    assert_keys_exactly_once,
    connect,
    make_audit,
    make_incident,
    make_instance,
    make_peer,
    make_pings,
    make_settings,
    running_repo,
    table_counts,
    wait_delivered,
)
from pgserver import BasePg, PgDatabase

from clawd.core.errors import DatabaseError
from clawd.core.model import EventType, PeerStatus
from clawd.keep.store.migrations import migrate
from clawd.keep.store.ops import PingBatch, WriteOp, decode_op
from clawd.keep.store.pg_store import PgStore


@pytest.fixture
async def store(pg_db: PgDatabase, tmp_path: Path) -> AsyncIterator[PgStore]:
    pg = await PgStore.open(make_settings(pg_db, tmp_path / "home").postgres)
    try:
        yield pg
    finally:
        await pg.close()


async def test_open_migrates_a_fresh_database(store: PgStore) -> None:
    assert await store.counts() == {
        "fleet_instances": 0,
        "peer_status": 0,
        "ping_history": 0,
        "incident_log": 0,
        "skill_audit": 0,
    }


async def test_apply_lands_everything_and_replay_adds_nothing(
    store: PgStore, pg_db: PgDatabase
) -> None:
    pings = make_pings(5000)
    incidents = [make_incident("gw-a", n) for n in range(12)]
    audits = [make_audit("gw-b", n) for n in range(6)]
    instances = [make_instance(g, n) for n, g in enumerate(("gw-a", "gw-b", "gw-c"))]
    peers = [
        make_peer("gw-a"),
        make_peer("gw-b", PeerStatus.OFFLINE),
        make_peer("gw-c", PeerStatus.UNRESPONSIVE),
    ]
    ops: list[WriteOp] = [*instances, *peers, PingBatch(tuple(pings)), *incidents, *audits]

    await store.apply(ops)
    expected = {
        "fleet_instances": 3,
        "peer_status": 3,
        "ping_history": 5000,
        "incident_log": 12,
        "skill_audit": 6,
    }
    assert await table_counts(pg_db) == expected

    # A replay (after an outage) of the same ops, whole and one by one, adds no row.
    await store.apply(ops)
    for op in ops:
        await store.apply([op])
    assert await table_counts(pg_db) == expected

    async with connect(pg_db) as conn:
        await assert_keys_exactly_once(conn, "ping_history", [p.key for p in pings])
        await assert_keys_exactly_once(conn, "incident_log", [i.key for i in incidents])
        await assert_keys_exactly_once(conn, "skill_audit", [a.key for a in audits])

        ping = pings[1]
        row = await conn.fetchrow(
            'SELECT source_gateway, target_gateway, success, "timestamp", response_ms'
            " FROM ping_history WHERE client_key = $1",
            ping.key,
        )
        assert tuple(row) == (
            ping.source_gateway,
            ping.target_gateway,
            ping.success,
            ping.timestamp,
            ping.response_ms,
        )
        assert await conn.fetchval("SELECT count(*) FROM ping_history WHERE NOT success") == len(
            [p for p in pings if not p.success]
        )

        inc = incidents[5]
        row = await conn.fetchrow(
            'SELECT gateway_id, event_type, details, "timestamp" FROM incident_log'
            " WHERE client_key = $1",
            inc.key,
        )
        assert row["gateway_id"] == inc.gateway_id
        assert row["event_type"] == inc.event_type.value
        assert json.loads(row["details"]) == inc.details
        assert row["timestamp"] == inc.timestamp

        audit = audits[2]
        row = await conn.fetchrow(
            "SELECT gateway_id, skill_name, action, source FROM skill_audit WHERE client_key = $1",
            audit.key,
        )
        assert tuple(row) == (audit.gateway_id, audit.skill_name, audit.action.value, audit.source)

        inst = instances[1]
        row = await conn.fetchrow(
            "SELECT name, lead_number, ip, ssh_user, version, github_repo, registered_at"
            " FROM fleet_instances WHERE gateway_id = $1",
            inst.gateway_id,
        )
        assert tuple(row) == (
            inst.name,
            inst.lead_number,
            inst.ip,
            inst.ssh_user,
            inst.version,
            inst.github_repo,
            inst.registered_at,
        )

        peer = peers[1]
        row = await conn.fetchrow(
            "SELECT status, last_seen, last_ping_attempt, missed_pings, ssh_connectivity,"
            " claw_clan_installed, mdns_broadcasting, updated_at"
            " FROM peer_status WHERE gateway_id = $1",
            peer.gateway_id,
        )
        assert tuple(row) == (
            "offline",
            None,
            peer.last_ping_attempt,
            3,
            False,
            True,
            False,
            peer.updated_at,
        )


async def test_replay_through_spool_encoding_adds_nothing(
    store: PgStore, pg_db: PgDatabase
) -> None:
    """Ops decoded from their spool lines (as after a restart) are the same rows."""
    from clawd.keep.store.ops import encode_op

    ops: list[WriteOp] = [
        make_instance("gw-a"),
        make_peer("gw-a"),
        PingBatch(tuple(make_pings(300))),
        make_incident("gw-a", 1),
        make_audit("gw-a", 1),
    ]
    await store.apply(ops)
    before = await table_counts(pg_db)
    replayed = [decode_op(json.loads(json.dumps(encode_op(op)))) for op in ops]
    await store.apply(replayed)
    assert await table_counts(pg_db) == before


async def test_mixed_batches_in_one_transaction_land_once(
    store: PgStore, pg_db: PgDatabase
) -> None:
    first, second = make_pings(700), make_pings(400)
    inc = make_incident("gw-a", 2)
    await store.apply([PingBatch(tuple(first)), inc, PingBatch(tuple(second))])
    async with connect(pg_db) as conn:
        await assert_keys_exactly_once(conn, "ping_history", [p.key for p in first + second])
        await assert_keys_exactly_once(conn, "incident_log", [inc.key])


async def test_older_peer_state_does_not_overwrite_newer(store: PgStore, pg_db: PgDatabase) -> None:
    now = datetime.now(UTC)
    newer = make_peer("gw-a", PeerStatus.OFFLINE, updated_at=now)
    older = make_peer("gw-a", PeerStatus.ONLINE, updated_at=now - timedelta(minutes=5))

    await store.apply([make_instance("gw-a"), newer])
    await store.apply([older])  # a late replay from the spool
    await store.apply([newer, older])  # reordered within one batch
    async with connect(pg_db) as conn:
        row = await conn.fetchrow(
            "SELECT status, missed_pings, updated_at FROM peer_status WHERE gateway_id = 'gw-a'"
        )
    assert tuple(row) == ("offline", 3, now)

    newest = make_peer("gw-a", PeerStatus.ONLINE, updated_at=now + timedelta(seconds=1))
    await store.apply([newest])
    async with connect(pg_db) as conn:
        assert await conn.fetchval("SELECT status FROM peer_status WHERE gateway_id = 'gw-a'") == (
            "online"
        )


async def test_older_instance_does_not_overwrite_newer(store: PgStore, pg_db: PgDatabase) -> None:
    now = datetime.now(UTC)
    newer = make_instance("gw-a", ip="10.9.9.9", updated_at=now)
    older = dataclasses.replace(newer, ip="10.1.1.1", updated_at=now - timedelta(hours=1))
    await store.apply([newer])
    await store.apply([older])
    async with connect(pg_db) as conn:
        assert await conn.fetchval("SELECT ip FROM fleet_instances WHERE gateway_id='gw-a'") == (
            "10.9.9.9"
        )


async def test_peer_state_for_unknown_instance_lands_with_placeholder(
    store: PgStore, pg_db: PgDatabase
) -> None:
    state = make_peer("gw-seen-by-ping-only", PeerStatus.UNRESPONSIVE)
    await store.apply([state])
    async with connect(pg_db) as conn:
        assert await conn.fetchval(
            "SELECT status FROM peer_status WHERE gateway_id = $1", state.gateway_id
        ) == ("unresponsive")
        placeholder = await conn.fetchrow(
            "SELECT name, ip FROM fleet_instances WHERE gateway_id = $1", state.gateway_id
        )
    assert tuple(placeholder) == (state.gateway_id, None)

    # The real identity arrives later and replaces the placeholder.
    real = make_instance(state.gateway_id, 4, name="kitchen-pi")
    await store.apply([real])
    await store.apply([state])  # a replayed status does not bring the placeholder back
    async with connect(pg_db) as conn:
        row = await conn.fetchrow(
            "SELECT name, ip FROM fleet_instances WHERE gateway_id = $1", state.gateway_id
        )
        n = await conn.fetchval("SELECT count(*) FROM fleet_instances")
    assert tuple(row) == ("kitchen-pi", real.ip)
    assert n == 1


async def test_rejected_batch_writes_nothing(store: PgStore, pg_db: PgDatabase) -> None:
    good = make_incident("gw-a", 1)
    bad = make_incident("gw-a", 2)
    bad.details["output"] = "binary\x00garbage"  # jsonb refuses \u0000
    with pytest.raises(DatabaseError, match="rejected a write"):
        await store.apply([good, bad])
    assert (await table_counts(pg_db))["incident_log"] == 0


async def test_one_bad_record_does_not_block_the_rest(pg_db: PgDatabase, tmp_path: Path) -> None:
    """Through the repository: the refused incident is set aside, the others arrive.

    Reinstalls: each is its own event (two reports of one peer's `online` in a row would
    be one fleet event with the second as a witness; see test_fleet_record.py)."""
    home = tmp_path / "home"
    reinstall = EventType.REINSTALL
    good_before = [make_incident("gw-a", n, reinstall) for n in range(3)]
    bad = make_incident("gw-a", 99, reinstall)
    bad.details["output"] = "binary\x00garbage"
    good_after = [make_incident("gw-a", n, reinstall) for n in range(3, 6)]
    async with running_repo(make_settings(pg_db, home)) as repo:
        for inc in [*good_before, bad, *good_after]:
            await repo.record_incident(inc)
        await wait_delivered(repo)
        later = make_incident("gw-b", 7)
        await repo.record_incident(later)
        await wait_delivered(repo)
    async with connect(pg_db) as conn:
        await assert_keys_exactly_once(
            conn, "incident_log", [i.key for i in [*good_before, *good_after, later]]
        )
    rejected = (home / "spool" / "pg-rejected.jsonl").read_text().splitlines()
    assert [decode_op(json.loads(line)).key for line in rejected] == [bad.key]  # type: ignore[union-attr]


async def test_repository_with_a_role_that_may_only_read_and_write(
    pg_server: BasePg, pg_db: PgDatabase, tmp_path: Path
) -> None:
    """Least privilege: the owner migrated the schema; the daemon's role has DML rights only.

    The schema is current, so the daemon must start and deliver with those rights.
    """
    async with connect(pg_db) as conn:
        await migrate(conn)
    pg_server.create_role(DML_ROLE, DML_PASSWORD)
    async with connect(pg_db) as conn:
        await conn.execute(GRANT_DML)
    dml = dataclasses.replace(pg_db, user=DML_ROLE, password=DML_PASSWORD)
    pings = make_pings(200)
    incident = make_incident("gw-a", 1)
    async with running_repo(make_settings(dml, tmp_path / "home")) as repo:
        await repo.record_pings(pings)
        await repo.record_incident(incident)
        await repo.save_peer_state(make_peer("gw-a"))
        await wait_delivered(repo)
    async with connect(pg_db) as conn:
        await assert_keys_exactly_once(conn, "ping_history", [p.key for p in pings])
        await assert_keys_exactly_once(conn, "incident_log", [incident.key])
        assert await conn.fetchval("SELECT status FROM peer_status") == "online"
