-- One fleet, one record (issue 15, backend postgres): every machine of the fleet watches
-- the others and writes to this one database, so what each observer saw is evidence, and
-- a machine going offline or coming back is one incident_log row naming its witnesses.
--   observer_evidence  one row per observer's report (observer, target, what it saw)
--   fleet_verdict      the fleet's current verdict per machine ('up' or 'down'), since
--                      when, and the incident_log row that records it
-- Safe to run more than once.

CREATE TABLE IF NOT EXISTS observer_evidence (
    id          bigserial   PRIMARY KEY,
    observer    text        NOT NULL,
    target      text        NOT NULL,
    event_type  text        NOT NULL,
    details     jsonb,
    "timestamp" timestamptz NOT NULL,
    incident_id integer     REFERENCES incident_log (id) ON DELETE SET NULL,
    client_key  uuid        NOT NULL UNIQUE
);

CREATE INDEX IF NOT EXISTS idx_observer_evidence_timestamp
    ON observer_evidence ("timestamp");
CREATE INDEX IF NOT EXISTS idx_observer_evidence_target_timestamp
    ON observer_evidence (target, "timestamp");

CREATE TABLE IF NOT EXISTS fleet_verdict (
    gateway_id  text        PRIMARY KEY,
    verdict     text        NOT NULL CHECK (verdict IN ('up', 'down')),
    since       timestamptz NOT NULL,
    incident_id integer     REFERENCES incident_log (id) ON DELETE SET NULL
);
