-- clawd migration 008: peer_status holds the fleet's verdict, not the last writer's opinion.
--
-- Every observer of a shared database upserts peer_status for the machines it sees. Where
-- the fleet has a verdict on a machine (fleet_verdict, migration 007), that verdict wins:
-- down is 'offline' whoever writes; up turns a writer's 'offline' (one observer that
-- cannot reach it) into 'online' and keeps its 'unresponsive' (up, SSH failing) as it is.
-- Without a verdict the writer's status stands. Safe to run more than once.

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
