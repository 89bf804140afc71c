"""Shared helpers for the PostgreSQL-side tests: settings, records, a running repository."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from pgserver import PgDatabase

from clawd.config.load import settings_from_data
from clawd.config.settings import Settings
from clawd.core.model import (
    EventType,
    Incident,
    Instance,
    PeerState,
    PeerStatus,
    Ping,
    SkillAction,
    SkillAudit,
)
from clawd.keep.store.factory import build_repository
from clawd.keep.store.repository import FleetRepository

SELF_ID = "gw-self"

# repository -> its run() task, so that waits fail fast when delivery died
_RUN_TASKS: weakref.WeakKeyDictionary[FleetRepository, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)
# run() tasks whose death a test already reported (stop_repo does not raise it again)
_REPORTED: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()

# Timings small enough for tests; the seed's defaults are seconds.
FAST_STORAGE: dict[str, Any] = {
    "flushIntervalSeconds": 0.05,
    "retryInitialSeconds": 0.1,
    "retryMaxSeconds": 0.5,
}

# A least-privilege role: the owner migrated the schema, this one only reads and writes rows.
DML_ROLE = "clawd_dml"
DML_PASSWORD = "dml-test-pw-4c1d"
GRANT_DML = f"""
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {DML_ROLE};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {DML_ROLE};
"""

TABLES = ("fleet_instances", "peer_status", "ping_history", "incident_log", "skill_audit")


def settings_data(
    db: PgDatabase,
    home: Path,
    *,
    backend: str = "postgres",
    password: str | None = None,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    storage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config.json body (camelCase, as a user writes it) for `db`."""
    return {
        "backend": backend,
        "home": str(home),
        "postgres": {
            "host": host if host is not None else db.host,
            "port": port if port is not None else db.port,
            "database": database if database is not None else db.database,
            "user": db.user,
            "password": password if password is not None else db.password,
            "poolMin": 1,
            "poolMax": 4,
            "connectTimeoutSeconds": 5,
        },
        "instance": {
            "gatewayId": SELF_ID,
            "name": "self-node",
            "leadNumber": 1,
            "ip": "127.0.0.1",
            "sshUser": "claw",
        },
        "storage": dict(FAST_STORAGE if storage is None else storage),
    }


def make_settings(db: PgDatabase, home: Path, **kwargs: Any) -> Settings:
    return settings_from_data(settings_data(db, home, **kwargs), environ={})


# --------------------------------------------------------------------------- records


def make_pings(
    n: int, *, source: str = SELF_ID, targets: Sequence[str] = ("gw-a", "gw-b")
) -> list[Ping]:
    now = datetime.now(UTC)
    return [
        Ping(
            source_gateway=source,
            target_gateway=targets[i % len(targets)],
            success=i % 3 != 0,
            timestamp=now - timedelta(milliseconds=i),
            response_ms=(i % 500) if i % 3 != 0 else None,
        )
        for i in range(n)
    ]


def make_incident(gateway_id: str = "gw-a", n: int = 0, event: EventType | None = None) -> Incident:
    events = list(EventType)
    return Incident(
        gateway_id=gateway_id,
        event_type=event or events[n % len(events)],
        details={"n": n, "reason": f"test incident {n}", "nested": {"ok": True}},
    )


def make_audit(gateway_id: str = "gw-a", n: int = 0) -> SkillAudit:
    actions = list(SkillAction)
    return SkillAudit(
        gateway_id=gateway_id,
        skill_name=f"skill-{n}",
        action=actions[n % len(actions)],
        source=f"https://github.com/example/skills/{n}",
    )


def make_instance(gateway_id: str, n: int = 0, **kwargs: Any) -> Instance:
    values: dict[str, Any] = {
        "name": f"node-{gateway_id}",
        "lead_number": 10 + n,
        "ip": f"10.0.0.{n + 10}",
        "ssh_user": "claw",
        "version": "0.1.0",
        "github_repo": "https://github.com/example/skills",
    }
    values.update(kwargs)
    return Instance(gateway_id=gateway_id, **values)


def make_peer(gateway_id: str, status: PeerStatus = PeerStatus.ONLINE, **kwargs: Any) -> PeerState:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "status": status,
        "last_seen": now if status is PeerStatus.ONLINE else None,
        "last_ping_attempt": now,
        "missed_pings": 0 if status is PeerStatus.ONLINE else 3,
        "ssh_connectivity": status is PeerStatus.ONLINE,
        "claw_clan_installed": True,
        "mdns_broadcasting": status is PeerStatus.ONLINE,
    }
    values.update(kwargs)
    return PeerState(gateway_id=gateway_id, **values)


# --------------------------------------------------------------------------- database


@contextlib.asynccontextmanager
async def connect(db: PgDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db.dsn, timeout=10)
    try:
        yield conn
    finally:
        await conn.close(timeout=5)


async def table_counts(db: PgDatabase) -> dict[str, int]:
    async with connect(db) as conn:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}


async def assert_keys_exactly_once(
    conn: asyncpg.Connection, table: str, keys: Iterable[Any]
) -> None:
    """Every key is in `table` once, and the table holds nothing else.

    For incident_log, a report of an event the fleet had already recorded (another
    observer's, or the same verdict again) is delivered as evidence only
    (clawd/keep/store/fleet_record.py): its key is in observer_evidence instead."""
    expected = set(keys)
    rows = await conn.fetch(f"SELECT client_key, count(*) AS n FROM {table} GROUP BY client_key")
    found = {r["client_key"]: r["n"] for r in rows}
    duplicated = {k: n for k, n in found.items() if n != 1}
    assert not duplicated, f"{table}: {len(duplicated)} keys stored more than once"
    delivered = set(found)
    if table == "incident_log":
        delivered |= await evidence_keys(conn)
    missing = expected - delivered
    assert not missing, f"{table}: {len(missing)} of {len(expected)} keys missing"
    extra = set(found) - expected
    assert not extra, f"{table}: {len(extra)} unexpected rows"
    assert int(await conn.fetchval(f"SELECT count(*) FROM {table}")) == len(expected & set(found))


async def evidence_keys(conn: asyncpg.Connection) -> set[Any]:
    """The client keys of every observer's report kept as evidence."""
    return {r["client_key"] for r in await conn.fetch("SELECT client_key FROM observer_evidence")}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- repository


async def start_repo(
    settings: Settings, *, open_timeout: float = 15.0
) -> tuple[FleetRepository, asyncio.Event]:
    """build_repository + open, then run(ready) as a task (see stop_repo)."""
    repo = build_repository(settings)
    await asyncio.wait_for(repo.open(), timeout=open_timeout)
    ready = asyncio.Event()
    _RUN_TASKS[repo] = asyncio.create_task(repo.run(ready), name="repo-run")
    return repo, ready


def _task_died(task: asyncio.Task[None]) -> AssertionError:
    """The failure to raise when run() ended on its own (it only ends after stop())."""
    _REPORTED.add(task)
    if task.cancelled():
        return AssertionError("the repository's delivery task was cancelled")
    exc = task.exception()
    error = AssertionError(f"the repository's delivery task died: {exc!r}")
    error.__cause__ = exc
    return error


async def _until(repo: FleetRepository, aw: Awaitable[Any], timeout: float) -> bool:
    """Await `aw` for at most `timeout` s; False on timeout; fails if run() died meanwhile."""
    task = _RUN_TASKS.get(repo)
    fut = asyncio.ensure_future(aw)
    watched: set[asyncio.Future[Any]] = {fut} if task is None else {fut, task}
    await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if fut.done():
        fut.result()
        return True
    fut.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fut
    if task is not None and task.done():
        raise _task_died(task)
    return False


async def wait_ready(repo: FleetRepository, ready: asyncio.Event, timeout: float) -> bool:
    """True once `ready` is set, False after `timeout`; fails if run() died."""
    return await _until(repo, ready.wait(), timeout)


async def flush_within(repo: FleetRepository, timeout: float = 10.0) -> None:
    """repo.flush(), bounded; fails if run() died."""
    if not await _until(repo, repo.flush(), timeout):
        raise AssertionError(f"flush() did not return within {timeout} s")


async def stop_repo(repo: FleetRepository) -> None:
    """stop(), wait for run() (raising what it died of, unless already reported), close."""
    task = _RUN_TASKS.pop(repo)
    repo.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=20)
    except Exception:
        if task not in _REPORTED:
            raise
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await repo.close()


@contextlib.asynccontextmanager
async def running_repo(
    settings: Settings, *, ready_timeout: float = 15.0
) -> AsyncIterator[FleetRepository]:
    """A started repository, ready; stopped and closed on exit."""
    repo, ready = await start_repo(settings, open_timeout=ready_timeout)
    try:
        if not await wait_ready(repo, ready, ready_timeout):
            raise AssertionError(f"repository not ready within {ready_timeout} s")
        yield repo
    finally:
        await stop_repo(repo)


async def wait_delivered(repo: FleetRepository, timeout: float = 20.0) -> None:
    """Until everything written so far is in PostgreSQL (bounded); fails if run() died."""
    assert repo.sink is not None
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        left = deadline - time.monotonic()
        if left <= 0 or not await _until(repo, repo.flush(), left):
            break
        if repo.sink.connected and repo.sink.backlog_bytes == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"not delivered within {timeout} s: connected={repo.sink.connected} "
        f"backlog_bytes={repo.sink.backlog_bytes}"
    )
