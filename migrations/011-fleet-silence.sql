-- clawd migration 011: silences (issue 16), fleet-wide with backend postgres.
--
-- A silence names a machine (gateway_id) or all of them (NULL) and a time span; an
-- incident it covers is recorded with details.silenced = its id and told to nobody.
-- `clawd silence remove` sets removed_at (the row stays: what was silenced, and why).
-- Safe to run more than once.

CREATE TABLE IF NOT EXISTS fleet_silence (
    id          text        PRIMARY KEY,
    gateway_id  text,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at > starts_at),
    reason      text        NOT NULL,
    author      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    removed_at  timestamptz
);

CREATE INDEX IF NOT EXISTS idx_fleet_silence_current
    ON fleet_silence (ends_at) WHERE removed_at IS NULL;
