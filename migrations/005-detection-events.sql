-- Event types of the detection layer (issue 7); 001 is never edited, so the CHECK on
-- incident_log.event_type is replaced here by a wider one.
--   partition      many peers dropped at once: one record instead of one `offline` each
--   partition_end  the partition healed (or shrank below the threshold)
--   unreachable    this instance cannot reach a peer that other peers still reach
--   flap_start     a peer's percent state change crossed the high threshold
--   flap_stop      ... and fell below the low threshold again
-- Safe to run more than once.

ALTER TABLE incident_log DROP CONSTRAINT IF EXISTS incident_log_event_type_check;
ALTER TABLE incident_log ADD CONSTRAINT incident_log_event_type_check
    CHECK (event_type IN ('offline', 'online', 'recovery', 'reinstall', 'skill_sync',
                          'leader_change', 'partition', 'partition_end', 'unreachable',
                          'flap_start', 'flap_stop'));
