"""PostgreSQL going away (stop, SIGKILL, never there, daemon crash): nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from helpers_pg import (
    SELF_ID,
    assert_keys_exactly_once,
    connect,
    flush_within,
    make_audit,
    make_incident,
    make_instance,
    make_peer,
    make_pings,
    make_settings,
    running_repo,
    start_repo,
    stop_repo,
    wait_delivered,
    wait_ready,
)
from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, PgDatabase, PgServer

from clawd.core.lock_ids import MIGRATION_LOCK_ID
from clawd.core.model import Incident, PeerStatus, Ping, SkillAudit
from clawd.keep.store.factory import build_repository
from clawd.keep.store.repository import FleetRepository

PINGS_PER_ROUND = 25
MAX_ROUNDS = 4000  # bound on every write loop
MAX_WRITE_SECONDS = 1.0  # a write must never wait for the database


def _db(private_pg: PgServer) -> PgDatabase:
    return private_pg.database("claw_clan", TEST_DB_USER, TEST_DB_PASSWORD)


def _spool_file(home: Path) -> Path:
    return home / "spool" / "pg-spool.jsonl"


class Writer:
    """Writes pings and incidents like the daemon does, remembering every key."""

    def __init__(self, repo: FleetRepository) -> None:
        self.repo = repo
        self.pings: list[Ping] = []
        self.incidents: list[Incident] = []
        self.audits: list[SkillAudit] = []
        self.slowest = 0.0
        self.rounds = 0

    async def round(self) -> None:
        pings = make_pings(PINGS_PER_ROUND)
        incident = make_incident("gw-a", self.rounds)
        started = time.monotonic()
        await self.repo.record_pings(pings)
        await self.repo.record_incident(incident)
        self.slowest = max(self.slowest, time.monotonic() - started)
        self.pings.extend(pings)
        self.incidents.append(incident)
        self.rounds += 1
        await asyncio.sleep(0.005)

    async def rounds_while(self, job: asyncio.Future[None], minimum: int = 5) -> int:
        """Keep writing until `job` is done (and at least `minimum` rounds); bounded."""
        n = 0
        for n in range(1, MAX_ROUNDS + 1):
            await self.round()
            if job.done() and n >= minimum:
                break
        await job  # raise its error, if any
        return n

    async def rounds_n(self, n: int) -> None:
        for _ in range(n):
            await self.round()


async def _assert_all_there_once(db: PgDatabase, writer: Writer) -> None:
    async with connect(db) as conn:
        await assert_keys_exactly_once(conn, "ping_history", [p.key for p in writer.pings])
        await assert_keys_exactly_once(conn, "incident_log", [i.key for i in writer.incidents])
        if writer.audits:
            await assert_keys_exactly_once(conn, "skill_audit", [a.key for a in writer.audits])


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_writes_survive_an_outage_exactly_once(
    private_pg: PgServer, tmp_path: Path, outage: str
) -> None:
    db = _db(private_pg)
    home = tmp_path / "home"
    interrupt: Callable[[], None] = private_pg.stop if outage == "stop" else private_pg.kill

    async with running_repo(make_settings(db, home)) as repo:
        assert repo.sink is not None
        writer = Writer(repo)
        await writer.rounds_n(20)
        await wait_delivered(repo)  # connected, pool warm

        # The server goes away while the daemon keeps writing.
        await writer.rounds_while(asyncio.ensure_future(asyncio.to_thread(interrupt)))
        await writer.rounds_n(30)
        await flush_within(repo)
        assert not repo.sink.connected
        assert repo.sink.backlog_bytes > 0
        assert _spool_file(home).stat().st_size > 0

        # It comes back while the daemon keeps writing.
        await writer.rounds_while(asyncio.ensure_future(asyncio.to_thread(private_pg.start_again)))
        await writer.rounds_n(20)
        await wait_delivered(repo)

    assert writer.slowest < MAX_WRITE_SECONDS, f"a write took {writer.slowest:.2f} s"
    await _assert_all_there_once(db, writer)


RESTARTS = 8
# The sink wakes up for every round of writes: many deliveries around each restart.
BUSY_STORAGE = {
    "flushIntervalSeconds": 0.01,
    "batchMaxRows": PINGS_PER_ROUND,
    "retryInitialSeconds": 0.1,
    "retryMaxSeconds": 0.5,
}


async def test_delivery_survives_repeated_restarts(private_pg: PgServer, tmp_path: Path) -> None:
    """A routine `pg_ctl restart` (upgrades, config changes) must never stop delivery."""
    db = _db(private_pg)
    settings = make_settings(db, tmp_path / "home", storage=BUSY_STORAGE)
    async with running_repo(settings) as repo:
        writer = Writer(repo)
        for _ in range(RESTARTS):
            await writer.rounds_n(10)
            await wait_delivered(repo)  # connected, with warm pool connections
            await writer.rounds_while(asyncio.ensure_future(asyncio.to_thread(private_pg.stop)))
            await writer.rounds_while(
                asyncio.ensure_future(asyncio.to_thread(private_pg.start_again))
            )
        await writer.rounds_n(10)
        await wait_delivered(repo)
    assert writer.slowest < MAX_WRITE_SECONDS
    await _assert_all_there_once(db, writer)


async def test_spooled_writes_survive_a_daemon_crash(private_pg: PgServer, tmp_path: Path) -> None:
    """Written while PostgreSQL was down, then the daemon died: the next run delivers them."""
    db = _db(private_pg)
    home = tmp_path / "home"
    settings = make_settings(db, home)
    await asyncio.to_thread(private_pg.stop)

    repo = build_repository(settings)
    await repo.open()
    ready = asyncio.Event()
    task = asyncio.create_task(repo.run(ready))
    await asyncio.wait_for(ready.wait(), timeout=10)
    writer = Writer(repo)
    try:
        await repo.upsert_instance(make_instance("gw-a", 1))
        await writer.rounds_n(40)
        # Unresponsive, after the incidents: they leave the fleet's verdict on gw-a up,
        # which keeps an unresponsive status as written (an offline one would read online).
        await repo.save_peer_state(make_peer("gw-a", PeerStatus.UNRESPONSIVE))
        for n in range(5):
            audit = make_audit("gw-a", n)
            await repo.record_skill_audit(audit)
            writer.audits.append(audit)
        await flush_within(repo)  # durable in the spool
    finally:
        # The crash: no stop(), no drain; the task is just gone.
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await repo.close()

    spooled = _spool_file(home).read_text().splitlines()
    assert spooled, "the writes should be waiting in the spool"
    assert all(json.loads(line) for line in spooled)

    await asyncio.to_thread(private_pg.start_again)
    async with running_repo(settings) as repo2:
        await wait_delivered(repo2)
        # The spool is used up once delivered.
        assert _spool_file(home).stat().st_size == 0

    await _assert_all_there_once(db, writer)
    async with connect(db) as conn:
        peer = await conn.fetchrow("SELECT status FROM peer_status WHERE gateway_id = 'gw-a'")
        names = await conn.fetch("SELECT gateway_id, name FROM fleet_instances ORDER BY 1")
    assert peer is not None and peer["status"] == "unresponsive"
    assert [(r["gateway_id"], r["name"]) for r in names] == [
        ("gw-a", "node-gw-a"),
        (SELF_ID, "self-node"),
    ]


async def test_spooled_writes_survive_a_clean_shutdown_during_an_outage(
    private_pg: PgServer, tmp_path: Path
) -> None:
    db = _db(private_pg)
    home = tmp_path / "home"
    settings = make_settings(db, home)
    async with running_repo(settings) as repo:
        writer = Writer(repo)
        await writer.rounds_n(10)
        await asyncio.to_thread(private_pg.stop)
        await writer.rounds_n(30)
    # Stopped without the server back: the rest is in the spool.
    assert _spool_file(home).stat().st_size > 0

    await asyncio.to_thread(private_pg.start_again)
    async with running_repo(settings) as repo2:
        await wait_delivered(repo2)
    await _assert_all_there_once(db, writer)


async def test_postgres_down_at_start_then_up(private_pg: PgServer, tmp_path: Path) -> None:
    db = _db(private_pg)
    home = tmp_path / "home"
    await asyncio.to_thread(private_pg.stop)

    started = time.monotonic()
    async with running_repo(make_settings(db, home), ready_timeout=10) as repo:
        assert time.monotonic() - started < 5, "start must not wait for PostgreSQL"
        assert repo.sink is not None and not repo.sink.connected
        writer = Writer(repo)
        await repo.upsert_instance(make_instance("gw-a", 1))
        await repo.save_peer_state(make_peer("gw-a", PeerStatus.ONLINE))
        await writer.rounds_n(20)
        await flush_within(repo)

        # The JSON files are written meanwhile (the seed's local fallback).
        peer_file = json.loads((home / "peers" / "gw-a.json").read_text())
        assert peer_file["status"] == "online"
        assert peer_file["ip"] == "10.0.0.11"
        fleet = json.loads((home / "fleet.json").read_text())
        assert {i["gatewayId"] for i in fleet["instances"]} == {SELF_ID, "gw-a"}
        state = json.loads((home / "state.json").read_text())
        assert state["sshUser"] == "claw"
        lines = (home / "incidents.jsonl").read_text().splitlines()
        assert [json.loads(line)["key"] for line in lines] == [str(i.key) for i in writer.incidents]

        await writer.rounds_while(asyncio.ensure_future(asyncio.to_thread(private_pg.start_again)))
        await wait_delivered(repo)

    assert writer.slowest < MAX_WRITE_SECONDS
    await _assert_all_there_once(db, writer)
    async with connect(db) as conn:
        assert await conn.fetchval("SELECT status FROM peer_status WHERE gateway_id='gw-a'") == (
            "online"
        )
        assert await conn.fetchval("SELECT count(*) FROM fleet_instances") == 2


async def _wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    for _ in range(250):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("clawd never asked for the migration lock")


async def test_ready_while_another_migrator_holds_the_lock(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    """Another machine is running a long migration (e.g. 002 rewriting a big ping_history):
    this daemon must still start, accept writes, and deliver them once the lock is free."""
    repo = None
    incidents = [make_incident("gw-a", n) for n in range(5)]
    async with connect(pg_db) as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            repo, ready = await start_repo(make_settings(pg_db, tmp_path / "home"))
            for inc in incidents:
                await repo.record_incident(inc)
            ready_in_time = await wait_ready(repo, ready, timeout=5.0)
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    assert repo is not None
    try:
        assert ready_in_time, "start blocked while another clawd held the migration lock"
        await wait_delivered(repo)
    finally:
        await stop_repo(repo)
    async with connect(pg_db) as conn:
        await assert_keys_exactly_once(conn, "incident_log", [i.key for i in incidents])


async def test_restart_while_waiting_for_the_migration_lock(
    private_pg: PgServer, tmp_path: Path
) -> None:
    """PostgreSQL restarts while clawd waits for another migrator: delivery carries on."""
    db = _db(private_pg)
    holder = await asyncpg.connect(db.dsn, timeout=10)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        repo, _ready = await start_repo(make_settings(db, tmp_path / "home"))
        try:
            writer = Writer(repo)
            await writer.rounds_n(10)
            await _wait_for_lock_waiter(holder)
            await writer.rounds_while(asyncio.ensure_future(asyncio.to_thread(private_pg.stop)))
            await writer.rounds_while(
                asyncio.ensure_future(asyncio.to_thread(private_pg.start_again))
            )
            await wait_delivered(repo)
        finally:
            await stop_repo(repo)
    finally:
        await holder.close(timeout=5)
    await _assert_all_there_once(db, writer)
