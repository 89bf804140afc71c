"""PostgreSQL advisory lock ids, all in one place so that no two jobs share one by accident.

Each is a name in ASCII, so a lock seen in `pg_locks` says whose it is.
"""

from __future__ import annotations

# "claw": serialises migrators across machines sharing one database.
MIGRATION_LOCK_ID = 0x636C6177
# "clawprun": one retention pruner per database, even with two self-declared leaders.
PRUNE_LOCK_ID = 0x636C61777072756E
# "clawroll": one hourly roller per database, even with two self-declared leaders.
ROLLUP_LOCK_ID = 0x636C6177726F6C6C
# "clawlead": the fleet leader's lease (backend postgres), held on a session of its own.
LEADER_LOCK_ID = 0x636C61776C656164
# "clawfevt": the fleet's verdicts are judged one report at a time (a transaction lock): a
# partition is judged across machines, and every judgement then takes its locks in order.
FLEET_EVENT_LOCK_ID = 0x636C617766657674

_ALL = {MIGRATION_LOCK_ID, PRUNE_LOCK_ID, ROLLUP_LOCK_ID, LEADER_LOCK_ID, FLEET_EVENT_LOCK_ID}
assert len(_ALL) == 5

# The leader lease's session is named after its instance, so `pg_stat_activity` lists the
# instances running clawd on this database: lease candidates, and the fleet's observers.
LEASE_APPLICATION_NAME = "clawd-lease"
# The pg_stat_activity rows of those sessions on the current database (a SQL condition).
LEASE_SESSIONS = (
    f"datname = current_database() AND application_name LIKE '{LEASE_APPLICATION_NAME} %'"
)


def lease_session_name(gateway_id: str) -> str:
    """The lease session's application_name (PostgreSQL keeps 63 bytes of it)."""
    return f"{LEASE_APPLICATION_NAME} {gateway_id}".encode()[:63].decode(errors="ignore")
