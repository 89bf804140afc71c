-- clawd migration 008: peer_status holds the fleet's verdict, not the last writer's opinion.
--
-- Every observer of a shared database upserts peer_status for the machines it sees. Where
-- the fleet has a verdict on a machine (fleet_verdict, migration 007), that verdict wins:
-- down is 'offline' whoever writes; up turns a writer's 'offline' (one observer that
-- cannot reach it) into 'online' and keeps its 'unresponsive' (up, SSH failing) as it is.
-- Without a verdict the writer's status stands. And fleet_verdict remembers when the
-- verdict before the current one began (previous_since): a report of the current verdict
-- older than that is about an earlier period -- evidence, not a witness. Safe to run more
-- than once.

ALTER TABLE fleet_verdict ADD COLUMN IF NOT EXISTS previous_since timestamptz;

CREATE OR REPLACE FUNCTION clawd_fleet_status(gateway text, opinion text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN v.verdict = 'down' THEN 'offline'
        WHEN v.verdict = 'up' AND opinion IN ('offline', 'unknown') THEN 'online'
        ELSE opinion
    END
    FROM (SELECT 1) AS one
    LEFT JOIN fleet_verdict v ON v.gateway_id = gateway
$$;
