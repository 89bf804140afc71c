-- Leadership through the shared database (issue 15, backend postgres): one lease row,
-- written only by the instance holding the leader advisory lock (clawd/core/lock_ids.py),
-- and one sequence every epoch comes from, so the whole fleet counts epochs once.
--   gateway_id   the leader (the lock holder that wrote the row last)
--   epoch        its leadership epoch, from fleet_leader_epoch
--   acquired_at  when it took the lease; renewed_at: its last renewal (every ping interval)
-- Safe to run more than once.

CREATE SEQUENCE IF NOT EXISTS fleet_leader_epoch AS bigint MINVALUE 1;

CREATE TABLE IF NOT EXISTS fleet_leader (
    id          smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    gateway_id  text        NOT NULL,
    epoch       bigint      NOT NULL CHECK (epoch > 0),
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL
);
