-- claw-clan initial schema: the five tables of the seed's PostgreSQL setup.
-- Safe to run more than once: psql -f 001-initial-schema.sql
-- Never edit this file; later changes go in new numbered files.

CREATE TABLE IF NOT EXISTS fleet_instances (
    gateway_id    TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    lead_number   INTEGER,
    ip            TEXT,
    ssh_user      TEXT,
    version       TEXT,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    github_repo   TEXT,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS peer_status (
    gateway_id          TEXT PRIMARY KEY REFERENCES fleet_instances (gateway_id) ON DELETE CASCADE,
    status              TEXT NOT NULL DEFAULT 'unknown'
                        CHECK (status IN ('online', 'offline', 'unresponsive', 'unknown')),
    last_seen           TIMESTAMPTZ,
    last_ping_attempt   TIMESTAMPTZ,
    missed_pings        INTEGER NOT NULL DEFAULT 0,
    ssh_connectivity    BOOLEAN NOT NULL DEFAULT FALSE,
    claw_clan_installed BOOLEAN NOT NULL DEFAULT FALSE,
    mdns_broadcasting   BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ping_history (
    id             SERIAL PRIMARY KEY,
    source_gateway TEXT NOT NULL,
    target_gateway TEXT NOT NULL,
    success        BOOLEAN NOT NULL,
    "timestamp"    TIMESTAMPTZ NOT NULL DEFAULT now(),
    response_ms    INTEGER
);

CREATE INDEX IF NOT EXISTS idx_ping_history_target_timestamp
    ON ping_history (target_gateway, "timestamp");

CREATE TABLE IF NOT EXISTS incident_log (
    id          SERIAL PRIMARY KEY,
    gateway_id  TEXT NOT NULL,
    event_type  TEXT NOT NULL
                CHECK (event_type IN ('offline', 'online', 'recovery', 'reinstall',
                                      'skill_sync', 'leader_change')),
    details     JSONB,
    "timestamp" TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_incident_log_timestamp ON incident_log ("timestamp");

CREATE TABLE IF NOT EXISTS skill_audit (
    id          SERIAL PRIMARY KEY,
    gateway_id  TEXT NOT NULL,
    skill_name  TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('install', 'update', 'remove')),
    source      TEXT,
    "timestamp" TIMESTAMPTZ NOT NULL DEFAULT now()
);
