-- Client-side idempotency keys for the append-only tables, so a write that is
-- replayed from clawd's spool after an outage lands exactly once.
-- Also widens ping_history.id: a 1,000-peer fleet pinging every 10 s writes
-- 8.6 M rows a day and would exhaust a 32-bit SERIAL in under a year.

ALTER TABLE ping_history ADD COLUMN IF NOT EXISTS client_key UUID;
CREATE UNIQUE INDEX IF NOT EXISTS uq_ping_history_client_key ON ping_history (client_key);

ALTER TABLE incident_log ADD COLUMN IF NOT EXISTS client_key UUID;
CREATE UNIQUE INDEX IF NOT EXISTS uq_incident_log_client_key ON incident_log (client_key);

ALTER TABLE skill_audit ADD COLUMN IF NOT EXISTS client_key UUID;
CREATE UNIQUE INDEX IF NOT EXISTS uq_skill_audit_client_key ON skill_audit (client_key);

ALTER TABLE ping_history ALTER COLUMN id TYPE BIGINT;
ALTER SEQUENCE IF EXISTS ping_history_id_seq AS BIGINT;

CREATE INDEX IF NOT EXISTS idx_incident_log_gateway_timestamp
    ON incident_log (gateway_id, "timestamp");
CREATE INDEX IF NOT EXISTS idx_skill_audit_timestamp ON skill_audit ("timestamp");
