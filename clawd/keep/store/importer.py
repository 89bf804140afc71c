"""`clawd db import-json`: backfill PostgreSQL from the JSON store, then check counts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from clawd.core.model import Incident, SkillAudit
from clawd.keep.store.fleet_record import observed_by
from clawd.keep.store.json_store import JsonStore
from clawd.keep.store.ops import WriteOp
from clawd.keep.store.pg_store import PgStore

CHUNK = 1000


@dataclass(slots=True)
class TableReport:
    table: str
    in_json: int
    before: int
    after: int | None = None
    missing: int = 0
    # Reports of an event the shared record already had: kept as evidence, not as rows.
    evidence_only: int = 0


@dataclass(slots=True)
class ImportReport:
    dry_run: bool
    tables: list[TableReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.missing == 0 for t in self.tables)


def _chunks(items: list[WriteOp]) -> Iterator[list[WriteOp]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


async def import_json(
    store: JsonStore, pg: PgStore, *, dry_run: bool, observer: str | None = None
) -> ImportReport:
    """Idempotent: every write is an upsert or keyed insert, so a re-run adds nothing.
    The reachability events are the reports of `observer` (this machine): in a fleet that
    shares the database, one row per real event, every report kept as evidence."""
    loaded = await store.load(read_only=True)
    snapshot = loaded.snapshot
    incidents: list[Incident] = [
        observed_by(i, observer, history=True) if observer else i
        for _, i in await asyncio.to_thread(lambda: list(store.read_incidents()))
    ]
    audits: list[SkillAudit] = [
        a for _, a in await asyncio.to_thread(lambda: list(store.read_skill_audits()))
    ]
    before = await pg.counts()
    report = ImportReport(dry_run=dry_run)
    sizes = {
        "fleet_instances": len(snapshot.instances),
        "peer_status": len(snapshot.peers),
        "incident_log": len(incidents),
        "skill_audit": len(audits),
    }
    for table, count in sizes.items():
        report.tables.append(TableReport(table, count, before[table]))
    if dry_run:
        return report

    ops: list[WriteOp] = [*snapshot.instances.values(), *snapshot.peers.values()]
    for chunk in _chunks([*ops, *incidents, *audits]):
        await pg.apply(chunk)

    after = await pg.counts()
    missing = {
        "fleet_instances": len(set(snapshot.instances) - await pg.gateway_ids("fleet_instances")),
        "peer_status": len(set(snapshot.peers) - await pg.gateway_ids("peer_status")),
        "incident_log": await _missing_keys(pg, "incident_log", [i.key for i in incidents]),
        "skill_audit": await _missing_keys(pg, "skill_audit", [a.key for a in audits]),
    }
    for row in report.tables:
        row.after = after[row.table]
        row.missing = missing[row.table]
        if row.table == "incident_log":
            rows = await _held(pg, [i.key for i in incidents], evidence=False)
            row.evidence_only = len(incidents) - row.missing - rows
    return report


async def _missing_keys(pg: PgStore, table: str, keys: list[object]) -> int:
    missing = 0
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        missing += len(chunk) - len(await pg.existing_keys(table, chunk))
    return missing


async def _held(pg: PgStore, keys: list[object], *, evidence: bool) -> int:
    """How many of these incident keys are incident_log rows (or evidence too)."""
    held = 0
    for i in range(0, len(keys), CHUNK):
        held += len(await pg.existing_keys("incident_log", keys[i : i + CHUNK], evidence=evidence))
    return held
