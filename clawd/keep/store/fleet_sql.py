"""SQL the fleet's record (fleet_record.py) and its partitions (fleet_partition.py) share."""

from __future__ import annotations

# The fleet's one row of a real event, keyed by the report that made it (a replay of that
# report adds nothing).
INSERT_FLEET_INCIDENT = """
INSERT INTO incident_log (gateway_id, event_type, details, "timestamp", client_key)
VALUES ($1, $2, $3::jsonb, $4, $5)
ON CONFLICT (client_key) DO NOTHING
RETURNING id
"""
