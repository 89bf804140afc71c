"""The running daemon prunes old history when it leads and the backend is PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from daemonproc import DaemonProcess
from helpers_pg import connect, settings_data
from pgserver import PgDatabase

from clawd.keep.store.migrations import migrate

SEED_ROWS = """
INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp", response_ms)
SELECT 'gw-old', 'gw-x', true, now() - make_interval(days => $1) - g * interval '1 s', 3
FROM generate_series(1, $2) AS g
"""


async def test_leader_prunes_ping_history_past_retention(tmp_path: Path, pg_db: PgDatabase) -> None:
    async with connect(pg_db) as conn:
        await migrate(conn)
        await conn.execute(SEED_ROWS, 100, 3000)  # past the 90-day default
        await conn.execute(SEED_ROWS, 10, 500)  # kept
    home = tmp_path / "home"
    home.mkdir()
    config = settings_data(pg_db, home)
    config["discovery"] = {"enabled": False}
    config["history"] = {"pruneIntervalSeconds": 0.5, "pruneBatchRows": 1000}
    (home / "config.json").write_text(json.dumps(config))
    daemon = DaemonProcess(home)
    try:
        line = await daemon.await_log("event=history_pruned", 30)
        assert "rows=3000" in line and "table=ping_history" in line
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log
    async with connect(pg_db) as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM ping_history WHERE source_gateway = 'gw-old'"
        )
    assert left == 500
    assert "Traceback" not in daemon.log
