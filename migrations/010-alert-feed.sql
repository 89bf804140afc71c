-- clawd migration 010: the fleet's notifications come from incident_log (issue 16).
--
-- With backend postgres the acting leader tells people of every incident_log row once,
-- whoever wrote it: it takes the rows not notified yet (notified_at IS NULL), hands them
-- to its outbox and marks them, in one transaction -- a new leader goes on where the last
-- one stopped. Rows already there when this runs are history: marked, never sent. Rows
-- inserted later are found whatever order their writers committed in (a cursor on id
-- would skip a row whose transaction committed after a newer one's). Safe to run more
-- than once.

ALTER TABLE incident_log ADD COLUMN IF NOT EXISTS notified_at timestamptz;
UPDATE incident_log SET notified_at = "timestamp" WHERE notified_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_incident_log_unnotified
    ON incident_log (id) WHERE notified_at IS NULL;
