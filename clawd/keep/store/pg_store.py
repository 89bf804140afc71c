"""PostgreSQL side of the repository: pool, idempotent batched writes, reads."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog

from clawd.config.sections import PostgresSettings
from clawd.core.errors import DatabaseError, DatabaseUnavailable
from clawd.core.model import Incident, Instance, PeerState, Ping, SkillAudit
from clawd.keep.store.fleet_record import is_fleet_event, record_fleet_event
from clawd.keep.store.migrations import Conn, migrate
from clawd.keep.store.ops import PingBatch, WriteOp
from clawd.keep.store.pg_errors import MIN_SERVER_MAJOR, TRANSIENT, connect_error, too_old_error
from clawd.keep.store.session_settings import session_settings

log = structlog.get_logger("clawd.keep.store.pg")

TABLES = ("fleet_instances", "peer_status", "ping_history", "incident_log", "skill_audit")

UPSERT_INSTANCE = """
INSERT INTO fleet_instances
    (gateway_id, name, lead_number, ip, ssh_user, version, registered_at, github_repo, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (gateway_id) DO UPDATE SET
    name = EXCLUDED.name, lead_number = EXCLUDED.lead_number, ip = EXCLUDED.ip,
    ssh_user = EXCLUDED.ssh_user, version = EXCLUDED.version,
    registered_at = LEAST(fleet_instances.registered_at, EXCLUDED.registered_at),
    github_repo = EXCLUDED.github_repo, updated_at = EXCLUDED.updated_at
WHERE fleet_instances.updated_at <= EXCLUDED.updated_at
"""

# A status may arrive before its instance (e.g. a peer seen only by ping):
# a placeholder row keeps the foreign key satisfied until the real one lands.
ENSURE_INSTANCE = """
INSERT INTO fleet_instances (gateway_id, name, updated_at) VALUES ($1, $1, '-infinity')
ON CONFLICT (gateway_id) DO NOTHING
"""

# Every machine of a fleet writes the same peers' rows: batches lock them in gateway order,
# and one that still crossed another (a deadlock, rolled back whole) is written again.
CONFLICTS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
CONFLICT_ATTEMPTS = 6

# Replayed or reordered writes never move a peer's status backwards in time; where the
# fleet has a verdict on the peer, the status is that verdict (migration 008).
UPSERT_PEER = """
INSERT INTO peer_status
    (gateway_id, status, last_seen, last_ping_attempt, missed_pings,
     ssh_connectivity, claw_clan_installed, mdns_broadcasting, updated_at)
VALUES ($1, clawd_fleet_status($1, $2), $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (gateway_id) DO UPDATE SET
    status = EXCLUDED.status, last_seen = EXCLUDED.last_seen,
    last_ping_attempt = EXCLUDED.last_ping_attempt, missed_pings = EXCLUDED.missed_pings,
    ssh_connectivity = EXCLUDED.ssh_connectivity,
    claw_clan_installed = EXCLUDED.claw_clan_installed,
    mdns_broadcasting = EXCLUDED.mdns_broadcasting, updated_at = EXCLUDED.updated_at
WHERE peer_status.updated_at <= EXCLUDED.updated_at
"""

INSERT_INCIDENT = """
INSERT INTO incident_log (gateway_id, event_type, details, "timestamp", client_key)
VALUES ($1, $2, $3::jsonb, $4, $5)
ON CONFLICT (client_key) DO NOTHING
"""

INSERT_SKILL_AUDIT = """
INSERT INTO skill_audit (gateway_id, skill_name, action, source, "timestamp", client_key)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (client_key) DO NOTHING
"""

PING_COLUMNS = [
    "source_gateway",
    "target_gateway",
    "success",
    "timestamp",
    "response_ms",
    "client_key",
]
PING_STAGE = "clawd_ping_stage"
CREATE_PING_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {PING_STAGE} (
    source_gateway TEXT, target_gateway TEXT, success BOOLEAN,
    "timestamp" TIMESTAMPTZ, response_ms INTEGER, client_key UUID
) ON COMMIT DELETE ROWS
"""
# COPY into a staging table, then insert what is new: COPY alone cannot skip
# rows a replay already delivered.
MERGE_PINGS = f"""
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms,
                          client_key)
SELECT source_gateway, target_gateway, success, "timestamp", response_ms, client_key
FROM {PING_STAGE}
ON CONFLICT (client_key) DO NOTHING
"""  # noqa: S608


def _instance_args(i: Instance) -> tuple[Any, ...]:
    return (
        i.gateway_id,
        i.name,
        i.lead_number,
        i.ip,
        i.ssh_user,
        i.version,
        i.registered_at,
        i.github_repo,
        i.updated_at,
    )


def _peer_args(s: PeerState) -> tuple[Any, ...]:
    return (
        s.gateway_id,
        s.status.value,
        s.last_seen,
        s.last_ping_attempt,
        s.missed_pings,
        s.ssh_connectivity,
        s.claw_clan_installed,
        s.mdns_broadcasting,
        s.updated_at,
    )


def _ping_record(p: Ping) -> tuple[Any, ...]:
    return (p.source_gateway, p.target_gateway, p.success, p.timestamp, p.response_ms, p.key)


def _incident_args(i: Incident) -> tuple[Any, ...]:
    return (i.gateway_id, i.event_type.value, json.dumps(i.details), i.timestamp, i.key)


def _audit_args(a: SkillAudit) -> tuple[Any, ...]:
    return (a.gateway_id, a.skill_name, a.action.value, a.source, a.timestamp, a.key)


def _target(incident: Incident) -> str:
    return incident.gateway_id


def _gateway(op: WriteOp) -> str:
    return op.gateway_id if isinstance(op, Instance | PeerState) else ""


async def _write_group(conn: Conn, kind: type, ops: list[WriteOp]) -> None:
    if kind is PingBatch:
        records = [_ping_record(p) for op in ops if isinstance(op, PingBatch) for p in op.pings]
        await conn.execute(CREATE_PING_STAGE)
        await conn.copy_records_to_table(PING_STAGE, records=records, columns=PING_COLUMNS)
        await conn.execute(MERGE_PINGS)
    elif kind is Instance:
        instances = sorted(ops, key=_gateway)  # rows locked in one order: see CONFLICTS
        await conn.executemany(UPSERT_INSTANCE, [_instance_args(o) for o in instances])  # type: ignore[arg-type]
    elif kind is PeerState:
        states = sorted(ops, key=_gateway)  # stable: one peer's states keep their order
        await conn.executemany(UPSERT_PEER, [_peer_args(o) for o in states])  # type: ignore[arg-type]
    elif kind is Incident:
        fleet_events: list[Incident] = []
        plain: list[tuple[Any, ...]] = []
        for op in ops:
            if isinstance(op, Incident):
                if is_fleet_event(op):
                    fleet_events.append(op)
                else:
                    plain.append(_incident_args(op))
        # Verdict rows are locked in one order (by machine; stable, so one machine's
        # reports keep theirs): two observers' batches about the same machines cannot
        # deadlock each other.
        for incident in sorted(fleet_events, key=_target):
            await record_fleet_event(conn, incident)
        if plain:
            await conn.executemany(INSERT_INCIDENT, plain)
    elif kind is SkillAudit:
        await conn.executemany(INSERT_SKILL_AUDIT, [_audit_args(o) for o in ops])  # type: ignore[arg-type]
    else:  # pragma: no cover - WriteOp is closed
        raise TypeError(f"unknown write op {kind!r}")


# Every transaction takes the tables in this order, each table's rows in gateway order:
# several machines writing the same peers' rows at once wait for each other, not in a
# circle. The instance rows a peer state needs come first (peer_status references them);
# peer states come after the incidents, so a state is judged against the verdicts its
# batch's reports made (migration 008), not overwritten by them.
WRITE_ORDER: tuple[type, ...] = (Instance, PingBatch, Incident, PeerState, SkillAudit)


async def _write_all(conn: Conn, ops: Sequence[WriteOp]) -> None:
    by_kind: dict[type, list[WriteOp]] = {kind: [] for kind in WRITE_ORDER}
    for op in ops:
        by_kind[type(op)].append(op)
    needed = sorted({o.gateway_id for o in by_kind[PeerState] if isinstance(o, PeerState)})
    if needed:
        await conn.executemany(ENSURE_INSTANCE, [(g,) for g in needed])
    for kind in WRITE_ORDER:
        if by_kind[kind]:
            await _write_group(conn, kind, by_kind[kind])


class PgStore:
    """An open asyncpg pool on a migrated database."""

    def __init__(self, pool: asyncpg.Pool, settings: PostgresSettings) -> None:
        self.pool = pool
        self.settings = settings

    @classmethod
    async def open(
        cls, settings: PostgresSettings, *, run_migrations: bool = True, daemon: bool = False
    ) -> PgStore:
        """Connect (raising DatabaseError with a one-line cause) and migrate. `daemon`: the
        running daemon's writers, whose stalled transactions PostgreSQL ends (a command's
        report holds a snapshot's transaction open while others read)."""
        try:
            pool = await asyncpg.create_pool(
                **settings.connect_kwargs(),
                min_size=min(settings.pool_min, settings.pool_max),
                max_size=settings.pool_max,
                command_timeout=60,
                server_settings=session_settings() if daemon else None,
            )
        except Exception as exc:
            raise connect_error(exc, settings) from None
        store = cls(pool, settings)
        try:
            await store._check_server()
            if run_migrations:
                async with pool.acquire() as conn:
                    await migrate(conn)
        except BaseException as exc:
            await store.close()
            if isinstance(exc, DatabaseError):
                raise
            if isinstance(exc, TRANSIENT):
                raise DatabaseUnavailable(
                    f"lost PostgreSQL at {settings.target()}: {exc or type(exc).__name__}"
                ) from None
            if isinstance(exc, asyncpg.PostgresError):
                raise DatabaseError(f"PostgreSQL at {settings.target()} refused: {exc}") from None
            raise
        return store

    async def _check_server(self) -> None:
        async with self.pool.acquire() as conn:
            version = conn.get_server_version()
            if version.major < MIN_SERVER_MAJOR:
                full = await conn.fetchval("SHOW server_version")
                raise too_old_error(version.major, str(full), self.settings)

    async def close(self) -> None:
        try:
            await self.pool.close()
        except TRANSIENT:
            self.pool.terminate()

    async def apply(self, ops: Sequence[WriteOp]) -> None:
        """Write `ops` in one transaction, in WRITE_ORDER (every write is idempotent and
        guarded by its timestamp or key, so only the lock order changes); a transaction
        that still crossed another machine's (a deadlock) is written again (bounded).

        Raises DatabaseUnavailable when the server went away (the caller keeps
        the ops and retries), DatabaseError when the server rejected the data.
        """
        try:
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                try:
                    async with self.pool.acquire() as conn, conn.transaction():
                        await _write_all(conn, ops)
                    return
                except CONFLICTS as exc:
                    # Several machines' batches crossed on the same rows: the server rolled
                    # this one back whole; it is idempotent, so it goes again.
                    if attempt == CONFLICT_ATTEMPTS:
                        raise DatabaseUnavailable(
                            f"PostgreSQL at {self.settings.target()}: {type(exc).__name__}"
                            f" {CONFLICT_ATTEMPTS} times in a row, retrying later"
                        ) from exc
                    log.info("postgres_write_conflict", error=type(exc).__name__, attempt=attempt)
                    await asyncio.sleep(random.uniform(0.01, 0.1) * attempt)  # noqa: S311 - jitter, not crypto
        except TRANSIENT as exc:
            raise DatabaseUnavailable(
                f"lost PostgreSQL at {self.settings.target()}: {exc or type(exc).__name__}"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise DatabaseError(
                f"PostgreSQL at {self.settings.target()} rejected a write: {exc}"
            ) from exc

    async def counts(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}  # noqa: S608

    async def existing_keys(
        self, table: str, keys: Sequence[Any], *, evidence: bool = True
    ) -> set[Any]:
        """The keys of `keys` that `table` holds; an observer's report of a reachability
        event is held as evidence (observer_evidence), whether or not it made the row
        (`evidence=False`: the rows' keys only)."""
        if table not in {"ping_history", "incident_log", "skill_audit"}:
            raise ValueError(f"no client keys in {table}")
        query = f"SELECT client_key FROM {table} WHERE client_key = ANY($1::uuid[])"  # noqa: S608
        if table == "incident_log" and evidence:
            query += " UNION SELECT client_key FROM observer_evidence WHERE client_key = ANY($1)"
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(query, list(keys))
        return {r["client_key"] for r in rows}

    async def gateway_ids(self, table: str) -> set[str]:
        if table not in {"fleet_instances", "peer_status"}:
            raise ValueError(f"no gateway rows in {table}")
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT gateway_id FROM {table}")  # noqa: S608
        return {r["gateway_id"] for r in rows}


__all__ = ["TABLES", "DatabaseError", "PgStore"]
