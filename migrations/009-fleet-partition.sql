-- clawd migration 009: a partition is one fleet event (issue 15, backend postgres).
--
-- When several machines drop at once -- a switch, a cable between two halves of the
-- fleet -- their observers report each of them offline. The fleet records one
-- `partition` incident instead of one `offline` row per machine, and one
-- `partition_end` when they are back.
--   fleet_partition  one row per partition: when it began, its members (machines that
--                    dropped together), those still down, how many must stay down for it
--                    to last (minimum), its `partition` and `partition_end` rows
-- A machine's fleet_verdict links to its partition's row while it is down with it.
-- Safe to run more than once.

CREATE TABLE IF NOT EXISTS fleet_partition (
    id              bigserial   PRIMARY KEY,
    started         timestamptz NOT NULL,
    ended           timestamptz,
    window_seconds  double precision NOT NULL,
    minimum         integer     NOT NULL CHECK (minimum >= 2),
    members         text[]      NOT NULL,
    down            text[]      NOT NULL,
    incident_id     integer     REFERENCES incident_log (id) ON DELETE SET NULL,
    end_incident_id integer     REFERENCES incident_log (id) ON DELETE SET NULL
);

-- At most one partition open at a time: the fleet judges one cut at a time.
CREATE UNIQUE INDEX IF NOT EXISTS fleet_partition_one_open
    ON fleet_partition ((true)) WHERE ended IS NULL;
CREATE INDEX IF NOT EXISTS idx_fleet_partition_incident
    ON fleet_partition (incident_id);
