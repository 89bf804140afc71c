-- Covering index for `clawd report`: the per-peer window over ping_history reads
-- (target_gateway, "timestamp", success, response_ms) from the index alone
-- (index-only scan, already in the window's order: no sort, no heap visits).
--
-- Plain CREATE INDEX, not CONCURRENTLY: clawd's migration runner applies each file
-- inside a transaction, where CONCURRENTLY is refused. A plain build blocks writes to
-- ping_history (reads go on) while it runs: about 10 s per 10 million rows on 2 cores;
-- the daemon's ping writes wait meanwhile and are not lost. To avoid that on a large
-- table, build it beforehand by hand, then migrate (IF NOT EXISTS makes this a no-op):
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ping_history_target_ts_cover
--       ON ping_history (target_gateway, "timestamp") INCLUDE (success, response_ms);
CREATE INDEX IF NOT EXISTS idx_ping_history_target_ts_cover
    ON ping_history (target_gateway, "timestamp") INCLUDE (success, response_ms);
