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

-- The fleet's incident stream: every incident_log row, whoever writes it, is one
-- NOTIFY on channel clawd_incident (delivered at commit; a rolled-back insert sends
-- nothing). Payload: {"id", "gateway_id", "event_type"}; read the row for the rest.
-- What tells people (notifications) listens here: one message per real event.
CREATE OR REPLACE FUNCTION clawd_incident_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('clawd_incident', json_build_object(
        'id', NEW.id, 'gateway_id', NEW.gateway_id, 'event_type', NEW.event_type)::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS incident_log_notify ON incident_log;
CREATE TRIGGER incident_log_notify AFTER INSERT ON incident_log
    FOR EACH ROW EXECUTE FUNCTION clawd_incident_notify();
