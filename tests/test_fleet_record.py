"""One incident per real event when several observers write to one database (issue 15).

Each observer is its own PgStore (its own pool) on one real PostgreSQL database, as each
machine of a postgres fleet is; they report one machine's outage and return, and the
record must hold one `offline` and one `recovery` row naming the observers as witnesses,
with every report kept as evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers_pg import (
    assert_keys_exactly_once,
    connect,
    evidence_keys,
    make_settings,
    running_repo,
    settings_data,
    wait_delivered,
)
from pgserver import PgDatabase

from clawd.config.load import settings_from_data
from clawd.config.settings import Settings
from clawd.core.lock_ids import FLEET_EVENT_LOCK_ID, lease_session_name
from clawd.core.model import EventType, Incident, PeerState, PeerStatus
from clawd.keep.store.fleet_record import INCIDENT_CHANNEL, settle_pending_downs
from clawd.keep.store.ops import WriteOp
from clawd.keep.store.pg_store import PgStore
from clawd.keep.store.session_settings import IDLE_IN_TRANSACTION_MS, session_settings

OBSERVERS = ("m1", "m2", "m3")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def stores(pg_db: PgDatabase, tmp_path: Path) -> AsyncIterator[dict[str, PgStore]]:
    """A store per observer, and the lease session each running clawd holds (by which
    the database counts the observers)."""
    opened: dict[str, PgStore] = {}
    sessions: list[asyncpg.Connection] = []
    try:
        for observer in OBSERVERS:
            settings = make_settings(pg_db, tmp_path / observer).postgres
            opened[observer] = await PgStore.open(settings)
            session = await asyncpg.connect(
                pg_db.dsn, server_settings={"application_name": lease_session_name(observer)}
            )
            sessions.append(session)
        yield opened
    finally:
        for store in opened.values():
            await store.close()
        for session in sessions:
            await session.close()


def report(
    observer: str, event: EventType, seconds: float, target: str = "m5", observers: int = 1
) -> Incident:
    """`observers`: how many the reporter counts (itself and the peers it sees up)."""
    details = {"name": target, "observer": observer, "missed_pings": 3}
    if event is EventType.OFFLINE:
        details["observers"] = observers
    return Incident(
        gateway_id=target,
        event_type=event,
        details=details,
        timestamp=T0 + timedelta(seconds=seconds),
    )


async def rows(pg_db: PgDatabase, table: str = "incident_log") -> list[asyncpg.Record]:
    order = "gateway_id" if table == "fleet_verdict" else '"timestamp", id'
    async with connect(pg_db) as conn:
        return list(await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}"))


def witnesses(row: asyncpg.Record) -> list[dict[str, Any]]:
    return list(json.loads(row["details"])["witnesses"])


async def test_three_observers_of_one_outage_make_one_offline_and_one_recovery_row(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    # All three report the outage at once (each in its own transaction, concurrently).
    await asyncio.gather(
        *(
            stores[o].apply([report(o, EventType.OFFLINE, 6 + n * 0.4, observers=3)])
            for n, o in enumerate(OBSERVERS)
        )
    )
    await asyncio.gather(
        *(
            stores[o].apply([report(o, EventType.RECOVERY, 40 + n * 0.3)])
            for n, o in enumerate(OBSERVERS)
        )
    )
    incidents = await rows(pg_db)
    assert [(r["gateway_id"], r["event_type"]) for r in incidents] == [
        ("m5", "offline"),
        ("m5", "recovery"),
    ]
    for row in incidents:
        named = witnesses(row)
        assert sorted(w["observer"] for w in named) == sorted(OBSERVERS), named
        assert all(w["first_seen"].startswith("2026-12-01T12:00:") for w in named)
    evidence = await rows(pg_db, "observer_evidence")
    assert len(evidence) == 6
    assert {r["incident_id"] for r in evidence} == {r["id"] for r in incidents}
    verdict = (await rows(pg_db, "fleet_verdict"))[0]
    assert (verdict["verdict"], verdict["incident_id"]) == ("up", incidents[1]["id"])


async def test_a_report_replayed_late_is_evidence_only(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """m3's spool held its `offline` while PostgreSQL was down; it arrives after the fleet
    recorded the recovery: no second outage, and a replay of the same report is a no-op."""
    await stores["m1"].apply([report("m1", EventType.OFFLINE, 6)])
    await stores["m1"].apply([report("m1", EventType.RECOVERY, 40)])
    late = report("m3", EventType.OFFLINE, 7)
    await stores["m3"].apply([late])
    await stores["m3"].apply([late])
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["offline", "recovery"]
    assert [w["observer"] for w in witnesses(incidents[0])] == ["m1"]
    evidence = await rows(pg_db, "observer_evidence")
    assert [(r["observer"], r["event_type"]) for r in evidence] == [
        ("m1", "offline"),
        ("m3", "offline"),
        ("m1", "recovery"),
    ]


async def test_back_up_after_a_fleet_outage_is_a_recovery_whoever_reports_it(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """An observer that started during the outage never saw m5 go down and says `online`;
    for the fleet m5 was down, so the row is a recovery with the fleet's downtime."""
    await stores["m1"].apply([report("m1", EventType.OFFLINE, 10)])
    await stores["m2"].apply([report("m2", EventType.ONLINE, 70)])
    await stores["m1"].apply([report("m1", EventType.RECOVERY, 71)])
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["offline", "recovery"]
    details = json.loads(incidents[1]["details"])
    assert details["downtime_seconds"] == 60.0
    assert [w["observer"] for w in details["witnesses"]] == ["m2", "m1"]


async def test_other_events_and_reports_without_an_observer_are_kept_as_they_come(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """A reinstall is one act of the leader; an imported JSON incident names no observer."""
    reinstall = report("m1", EventType.REINSTALL, 1)
    imported = Incident("m5", EventType.OFFLINE, {"name": "m5"}, T0 + timedelta(seconds=2))
    again = Incident("m5", EventType.OFFLINE, {"name": "m5"}, T0 + timedelta(seconds=3))
    await stores["m1"].apply([reinstall, imported, again])
    assert [r["event_type"] for r in await rows(pg_db)] == ["reinstall", "offline", "offline"]
    assert await rows(pg_db, "observer_evidence") == []


async def test_one_observer_that_cannot_reach_a_machine_is_no_fleet_outage(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """m1 counts three observers (itself, m2, m3); only it says m5 is down: evidence, no
    offline row, and no recovery row when it reaches m5 again. When m2 agrees, the fleet
    records the outage, naming both, at the time the majority was reached."""
    await stores["m1"].apply([report("m1", EventType.ONLINE, 1)])
    await stores["m1"].apply([report("m1", EventType.OFFLINE, 10, observers=3)])
    await stores["m1"].apply([report("m1", EventType.RECOVERY, 20)])
    assert [r["event_type"] for r in await rows(pg_db)] == ["online"]

    await stores["m1"].apply([report("m1", EventType.OFFLINE, 30, observers=3)])
    assert [r["event_type"] for r in await rows(pg_db)] == ["online"]
    await stores["m2"].apply([report("m2", EventType.OFFLINE, 31, observers=3)])
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["online", "offline"]
    details = json.loads(incidents[1]["details"])
    assert [w["observer"] for w in details["witnesses"]] == ["m1", "m2"]
    assert details["witnesses"][0]["first_seen"].startswith("2026-12-01T12:00:30")
    assert details["quorum"] == 2
    assert incidents[1]["timestamp"] == T0 + timedelta(seconds=31)
    linked = [r["incident_id"] for r in await rows(pg_db, "observer_evidence")]
    assert linked.count(incidents[1]["id"]) == 2


async def test_the_fleet_incident_stream_has_one_message_per_real_event(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """What will tell people listens on one channel: three observers of one outage and
    its end are two messages, not six; a rolled-back write sends none."""
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with connect(pg_db) as listener:
        await listener.add_listener(
            INCIDENT_CHANNEL, lambda *args: heard.put_nowait(json.loads(args[3]))
        )
        for n, o in enumerate(OBSERVERS):
            await stores[o].apply([report(o, EventType.OFFLINE, 6 + n, observers=3)])
        for n, o in enumerate(OBSERVERS):
            await stores[o].apply([report(o, EventType.RECOVERY, 40 + n)])
        insert = "INSERT INTO incident_log (gateway_id, event_type) VALUES ($1, 'reinstall')"
        with contextlib.suppress(asyncpg.DivisionByZeroError):
            async with connect(pg_db) as conn, conn.transaction():
                await conn.execute(insert, "m8")
                await conn.execute("SELECT 1/0")  # rolled back: m8's row never was
        async with connect(pg_db) as conn:
            await conn.execute(insert, "m9")
        incidents = await rows(pg_db)
        messages: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(messages) < len(incidents):
                messages.append(await heard.get())
        await asyncio.sleep(0.5)  # and nothing more arrives
    assert heard.empty()
    assert [(m["gateway_id"], m["event_type"]) for m in messages] == [
        ("m5", "offline"),
        ("m5", "recovery"),
        ("m9", "reinstall"),
    ]
    assert [m["id"] for m in messages] == [r["id"] for r in incidents]


async def test_peers_that_run_no_clawd_are_no_observers(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """m1 sees m5 and two more peers up (observers=3), but only m1 runs clawd here (one
    lease session, the others closed): its report alone is the fleet's verdict."""
    async with connect(pg_db) as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name"
            " IN ($1, $2)",
            lease_session_name("m2"),
            lease_session_name("m3"),
        )
    await stores["m1"].apply([report("m1", EventType.OFFLINE, 10, observers=3)])
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["offline"]
    assert json.loads(incidents[0]["details"])["quorum"] == 1


def seen_as(observer_status: PeerStatus, seconds: float, target: str = "m5") -> PeerState:
    at = T0 + timedelta(seconds=seconds)
    return PeerState(gateway_id=target, status=observer_status, updated_at=at)


async def peer_status(pg_db: PgDatabase, target: str = "m5") -> str:
    async with connect(pg_db) as conn:
        return str(
            await conn.fetchval("SELECT status FROM peer_status WHERE gateway_id = $1", target)
        )


async def test_peer_status_is_the_fleets_verdict_not_the_last_writers_opinion(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """m1 cannot reach m5 (no majority: the fleet says up) and writes its peer state last:
    peer_status still says online; once the majority says down it says offline, also when
    a slow observer writes `online` afterwards; the recovery moves it back at once."""
    await stores["m2"].apply([report("m2", EventType.ONLINE, 1), seen_as(PeerStatus.ONLINE, 1)])
    await stores["m1"].apply(
        [report("m1", EventType.OFFLINE, 6, observers=3), seen_as(PeerStatus.OFFLINE, 6)]
    )
    assert await peer_status(pg_db) == "online"
    await stores["m2"].apply([report("m2", EventType.OFFLINE, 7, observers=3)])
    assert await peer_status(pg_db) == "offline"  # the verdict moved the row at once
    await stores["m3"].apply([seen_as(PeerStatus.ONLINE, 8)])  # m3 has not seen it yet
    assert await peer_status(pg_db) == "offline"
    await stores["m3"].apply([report("m3", EventType.RECOVERY, 30)])
    assert await peer_status(pg_db) == "online"
    # Up and SSH failing is the observer's to tell: the verdict does not hide it.
    await stores["m1"].apply([seen_as(PeerStatus.UNRESPONSIVE, 31)])
    assert await peer_status(pg_db) == "unresponsive"


def machine_settings(pg_db: PgDatabase, home: Path, gateway_id: str, backend: str) -> Settings:
    data = settings_data(pg_db, home, backend=backend)
    data["instance"] = {**data["instance"], "gatewayId": gateway_id, "name": gateway_id}
    return settings_from_data(data, environ={})


async def test_a_whole_fleet_switching_from_json_keeps_one_record(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    """Three machines saw m5 come up, go down and come back while on JSON, each recording
    its own three incidents; the fleet then switches to the shared database (the seed:
    the leader pushes config.json): one row per real event, every report as evidence."""
    events = (EventType.ONLINE, EventType.OFFLINE, EventType.RECOVERY)
    for n, observer in enumerate(OBSERVERS):
        as_json = machine_settings(pg_db, tmp_path / observer, observer, "json")
        async with running_repo(as_json) as repo:
            for seconds, event in zip((1, 10, 40), events, strict=True):
                at = T0 + timedelta(seconds=seconds + n * 0.5)
                # As the reconciler writes it: no observer named (a JSON store has one).
                await repo.record_incident(Incident("m5", event, {"name": "m5"}, timestamp=at))
    keys = [
        uuid.UUID(json.loads(line)["key"])
        for observer in OBSERVERS
        for line in (tmp_path / observer / "incidents.jsonl").read_text().splitlines()
    ]
    assert len(keys) == 9
    for observer in OBSERVERS:  # one after the other, as config.json reaches each
        as_pg = machine_settings(pg_db, tmp_path / observer, observer, "postgres")
        async with running_repo(as_pg) as repo:
            await wait_delivered(repo)
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["online", "offline", "recovery"]
    # The others' reports of the recovery are its witnesses; their reports of the earlier
    # periods are evidence only (as a spool replayed late), so the first machine's history
    # names the others.
    named = [{w["observer"] for w in witnesses(r)} for r in incidents]
    assert named == [{"m1"}, {"m1"}, set(OBSERVERS)], named
    async with connect(pg_db) as conn:  # every report delivered: a row, or evidence
        await assert_keys_exactly_once(conn, "incident_log", [r["client_key"] for r in incidents])
        assert await evidence_keys(conn) == set(keys)


async def test_a_machine_whose_clawd_talks_to_the_database_is_not_offline(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """Two of three observers cannot reach m5, but m5's own clawd runs queries on the
    database: a cut between machines, not a machine that is down -- no `offline` row (the
    reports are evidence). Once its clawd is gone (the session closed), the next report
    makes the fleet's one `offline` row."""
    alive = await asyncpg.connect(
        pg_db.dsn, server_settings={"application_name": lease_session_name("m5")}
    )
    try:
        await alive.fetchval("SELECT 1")  # a lease round, just now
        for n, observer in enumerate(("m1", "m2")):
            cut = report(observer, EventType.OFFLINE, 6 + n, observers=3)
            cut.details["alive_window_s"] = 30.0
            await stores[observer].apply([cut])
        assert [r["event_type"] for r in await rows(pg_db)] == []
        assert len(await rows(pg_db, "observer_evidence")) == 2
    finally:
        await alive.close()
    await stores["m3"].apply([report("m3", EventType.OFFLINE, 9, observers=3)])
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["offline"]
    assert {w["observer"] for w in witnesses(incidents[0])} == set(OBSERVERS)
    assert "alive_window_s" not in json.loads(incidents[0]["details"])


async def test_an_outage_waiting_on_a_quiet_session_is_decided_without_a_new_report(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """A powered-off machine's lease session lingers (TCP has not given up) but runs no
    more queries: the majority's reports found it alive a moment ago; once its silence is
    longer than the window the leader's round decides the one `offline` row."""
    lingering = await asyncpg.connect(
        pg_db.dsn, server_settings={"application_name": lease_session_name("m5")}
    )
    try:
        await lingering.fetchval("SELECT 1")  # its last lease round before the power-off
        for observer in ("m1", "m2"):
            cut = report(observer, EventType.OFFLINE, 0, observers=3)
            cut.timestamp = datetime.now(UTC)  # the leader looks back a bounded while only
            cut.details["alive_window_s"] = 1.0
            await stores[observer].apply([cut])
        async with connect(pg_db) as conn:
            assert await settle_pending_downs(conn) == 0  # still within the window
        assert await rows(pg_db) == []
        await asyncio.sleep(1.5)  # its silence outlasts the window
        async with connect(pg_db) as conn:
            assert await settle_pending_downs(conn) == 1
            assert await settle_pending_downs(conn) == 0  # decided once
    finally:
        await lingering.close()
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["offline"]
    assert {w["observer"] for w in witnesses(incidents[0])} == {"m1", "m2"}
    assert json.loads(incidents[0]["details"])["quorum"] == 2


async def test_observers_writing_the_same_machines_at_once_lose_nothing(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """Every observer writes the same machines' peer rows and reports, each batch in its own
    order (what a 16-machine fleet did: deadlocks, writes set aside as rejected). Rows are
    locked in one order and a batch that still crossed another is written again."""
    targets = [f"t{n}" for n in range(8)]

    def batch(observer: str, n: int, order: list[str]) -> list[WriteOp]:
        at = 10 * n + OBSERVERS.index(observer) * 0.1
        event = EventType.OFFLINE if n % 2 else EventType.ONLINE
        states: list[WriteOp] = [seen_as(PeerStatus.ONLINE, at, t) for t in order]
        reports: list[WriteOp] = [report(observer, event, at, t, observers=3) for t in order]
        return states + reports

    for n in range(6):
        orders = [targets, targets[::-1], targets[3:] + targets[:3]]
        await asyncio.gather(
            *(
                stores[o].apply(batch(o, n, order))
                for o, order in zip(OBSERVERS, orders, strict=True)
            )
        )
    evidence = await rows(pg_db, "observer_evidence")
    assert len(evidence) == 6 * len(OBSERVERS) * len(targets)  # every report delivered
    per_target = {
        t: [r["event_type"] for r in await rows(pg_db) if r["gateway_id"] == t] for t in targets
    }
    expected = ["online", "offline", "recovery", "offline", "recovery", "offline"]
    assert all(events == expected for events in per_target.values()), per_target


def partition_report(observer: str, event: EventType, target: str, at: datetime) -> Incident:
    """A report as a daemon sends it: its alive window and partition rule with an outage."""
    incident = report(observer, event, 0, target, observers=2)
    incident.timestamp = at  # the leader looks back a bounded while only
    if event is EventType.OFFLINE:
        incident.details.update(
            alive_window_s=1.0,
            partition_window_s=2.0,
            partition_min_peers=2,
            partition_fraction=0.3,
        )
    return incident


async def test_machines_that_drop_together_are_one_partition_not_an_outage_each(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """A cable to three of the fleet's four machines is cut: m1 and m2 report each of them
    down while their lease sessions still look alive, then the leader's round decides once
    they are quiet: one `partition` naming the three, no `offline` row. They come back:
    one `partition_end`, no `recovery` row. Later m5 alone goes down: its own `offline`."""
    cut_off = ("m5", "m6", "m7")
    lingering = [
        await asyncpg.connect(
            pg_db.dsn, server_settings={"application_name": lease_session_name(target)}
        )
        for target in cut_off
    ]
    now = datetime.now(UTC)
    try:
        for session in lingering:
            await session.fetchval("SELECT 1")  # their last lease rounds before the cut
        for target in (*cut_off, "m8"):
            await stores["m1"].apply([partition_report("m1", EventType.ONLINE, target, now)])
        for n, target in enumerate(cut_off):
            for observer in ("m1", "m2"):
                at = now + timedelta(seconds=5 + 0.3 * n)
                await stores[observer].apply(
                    [partition_report(observer, EventType.OFFLINE, target, at)]
                )
        assert [r["event_type"] for r in await rows(pg_db)] == ["online"] * 4
        await asyncio.sleep(1.5)  # their silence outlasts the alive window
        async with connect(pg_db) as conn:
            assert await settle_pending_downs(conn) == 1  # one row: the partition
            assert await settle_pending_downs(conn) == 0
    finally:
        for session in lingering:
            await session.close()
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["online"] * 4 + ["partition"]
    opened = json.loads(incidents[-1]["details"])
    assert opened["members"] == list(cut_off) and opened["peers"] == 3 and opened["of"] == 4
    assert {w["observer"] for w in opened["witnesses"]} == {"m1", "m2"}
    assert not set(opened) & {"partition_window_s", "alive_window_s", "observer"}
    verdicts = {r["gateway_id"]: r for r in await rows(pg_db, "fleet_verdict")}
    assert {g: verdicts[g]["verdict"] for g in cut_off} == dict.fromkeys(cut_off, "down")
    assert {verdicts[g]["incident_id"] for g in cut_off} == {incidents[-1]["id"]}

    back = now + timedelta(seconds=30)
    for n, target in enumerate(cut_off):
        at = back + timedelta(seconds=0.2 * n)
        await stores["m1"].apply([partition_report("m1", EventType.RECOVERY, target, at)])
    incidents = await rows(pg_db)
    assert [r["event_type"] for r in incidents] == ["online"] * 4 + ["partition", "partition_end"]
    ended = json.loads(incidents[-1]["details"])
    assert (ended["peers"], ended["back"]) == (3, 3)  # the third came back with the others
    assert ended["duration_seconds"] == pytest.approx(25.2, abs=0.5)
    verdicts = {r["gateway_id"]: r["verdict"] for r in await rows(pg_db, "fleet_verdict")}
    assert set(verdicts.values()) == {"up"}

    alone = now + timedelta(seconds=60)
    for observer in ("m1", "m2"):
        await stores[observer].apply([partition_report(observer, EventType.OFFLINE, "m5", alone)])
    assert [r["event_type"] for r in await rows(pg_db)][-1] == "offline"


async def test_one_observers_unreachable_is_its_evidence_not_a_fleet_incident(
    stores: dict[str, PgStore], pg_db: PgDatabase
) -> None:
    """m1 alone cannot reach m5; its helpers do (`unreachable`, from m1 only): kept as m1's
    evidence, no incident_log row. A reinstall beside it is recorded as it comes."""
    finding = Incident(
        "m5",
        EventType.UNREACHABLE,
        {"name": "m5", "observer": "m1", "scope": "unreachable from this instance only"},
        T0 + timedelta(seconds=5),
    )
    await stores["m1"].apply([finding, report("m1", EventType.REINSTALL, 6)])
    await stores["m1"].apply([finding])  # a replay: nothing more
    assert [r["event_type"] for r in await rows(pg_db)] == ["reinstall"]
    evidence = await rows(pg_db, "observer_evidence")
    assert [(r["observer"], r["target"], r["event_type"]) for r in evidence] == [
        ("m1", "m5", "unreachable")
    ]


async def test_a_json_fleets_leader_changes_are_one_row_each_after_the_switch(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    """On JSON each machine recorded the fleet's leader changes itself (m1 in epoch 1, m2
    in epoch 2): at the switch, one row per change, naming every machine that saw it."""
    for n, observer in enumerate(OBSERVERS):
        as_json = machine_settings(pg_db, tmp_path / observer, observer, "json")
        async with running_repo(as_json) as repo:
            for seconds, old, new, epoch in ((1, None, "m1", 1), (50, "m1", "m2", 2)):
                at = T0 + timedelta(seconds=seconds + n * 0.7)
                details = {"old": old, "new": new, "epoch": epoch}
                await repo.record_incident(Incident(new, EventType.LEADER_CHANGE, details, at))
    for observer in OBSERVERS:
        as_pg = machine_settings(pg_db, tmp_path / observer, observer, "postgres")
        async with running_repo(as_pg) as repo:
            await wait_delivered(repo)
    incidents = await rows(pg_db)
    assert [(r["event_type"], r["gateway_id"]) for r in incidents] == [
        ("leader_change", "m1"),
        ("leader_change", "m2"),
    ]
    for row in incidents:
        assert {w["observer"] for w in witnesses(row)} == set(OBSERVERS)
        assert "observer" not in json.loads(row["details"])
    assert len(await rows(pg_db, "observer_evidence")) == 6


async def test_a_writer_cut_off_mid_transaction_does_not_stop_the_fleets_verdicts(
    pg_db: PgDatabase, stores: dict[str, PgStore]
) -> None:
    """A machine cut off by a partition in the middle of judging a report keeps its
    transaction (and the fleet-event lock) open until TCP gives up on it -- two hours.
    Its session, like every daemon's, has idle_in_transaction_session_timeout: PostgreSQL
    ends it, and the others' reports are judged again (measured: no verdict for > 60 s)."""
    cut_off = await asyncpg.connect(pg_db.dsn, server_settings=session_settings())
    transaction = cut_off.transaction()
    await transaction.start()
    await cut_off.execute("SELECT pg_advisory_xact_lock($1)", FLEET_EVENT_LOCK_ID)
    started = asyncio.get_running_loop().time()
    try:
        # Its client is gone: nothing more comes from it. m1's report waits, then lands.
        daemon_store = await PgStore.open(make_settings(pg_db, Path("/nonexistent")).postgres)
        try:
            await asyncio.wait_for(
                daemon_store.apply([report("m1", EventType.ONLINE, 1)]), timeout=60
            )
        finally:
            await daemon_store.close()
        waited = asyncio.get_running_loop().time() - started
        assert waited >= IDLE_IN_TRANSACTION_MS / 1000 * 0.8, waited  # it did wait on it
        assert [r["event_type"] for r in await rows(pg_db)] == ["online"]
        assert cut_off.is_closed() or not await _answers(cut_off)
    finally:
        cut_off.terminate()


async def _answers(conn: asyncpg.Connection) -> bool:
    try:
        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5)
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError):
        return False
    return True
