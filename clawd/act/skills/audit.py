"""Reading the skill audit trail: PostgreSQL with backend=postgres, else the JSON store."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import SkillAudit, utcnow
from clawd.core.schedule import parse_interval

QUERY = """
SELECT gateway_id, skill_name, action, source, "timestamp"
FROM skill_audit WHERE "timestamp" >= $1 ORDER BY "timestamp", id
"""


def since_time(text: str) -> datetime:
    """Now minus an interval like "7d"; ClawdError naming the accepted forms otherwise."""
    try:
        return utcnow() - parse_interval(text)
    except ValueError as exc:
        raise ClawdError(f"--since: {exc}") from None


def _row(
    gateway_id: str, skill: str, action: str, source: str | None, ts: datetime
) -> dict[str, Any]:
    return {
        "timestamp": ts.isoformat(),
        "gateway_id": gateway_id,
        "skill_name": skill,
        "action": action,
        "source": source,
    }


def _from_json(settings: Settings, since: datetime) -> list[dict[str, Any]]:
    from clawd.keep.store.json_store import JsonStore

    audits: list[SkillAudit] = [
        a for _, a in JsonStore(settings.home).read_skill_audits() if a.timestamp >= since
    ]
    audits.sort(key=lambda a: a.timestamp)
    return [_row(a.gateway_id, a.skill_name, a.action.value, a.source, a.timestamp) for a in audits]


async def _from_postgres(settings: Settings, since: datetime) -> list[dict[str, Any]]:
    from clawd.keep.store.pg_store import PgStore

    store = await PgStore.open(settings.postgres)
    try:
        async with store.pool.acquire() as conn:
            records = await conn.fetch(QUERY, since)
    finally:
        await store.close()
    return [
        _row(r["gateway_id"], r["skill_name"], r["action"], r["source"], r["timestamp"])
        for r in records
    ]


async def read_audit(settings: Settings, since: datetime) -> list[dict[str, Any]]:
    """skill_audit rows at or after `since`, oldest first, as plain dicts."""
    if settings.backend == "postgres":
        return await _from_postgres(settings, since)
    return await asyncio.to_thread(_from_json, settings, since)
