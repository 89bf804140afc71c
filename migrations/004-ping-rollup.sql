-- Hourly rollup of ping_history for `clawd report` (see clawd/history/rollup.py and the
-- definitions in clawd/history/report.py). One row per (peer, UTC hour) that has ended
-- and has been rolled; the report sums these rows and computes only the window's edges
-- and not-yet-rolled hours from ping_history.
--
--   pings, successes  counts of the hour's pings
--   up_ms, observed_ms  Σ min(span, 3·m) over successful / all pings, spans clipped at
--                     the hour's end, m = median gap between the hour's pings
--   median_gap_ms     m (NULL with fewer than two pings in the hour)
--   max_ms            the largest response_ms of a successful ping
--   latency_hist      successful pings per latency bucket. The bucket upper bounds are
--                     defined once, in clawd/history/latency.py (LATENCY_BOUNDS_MS), and
--                     passed to the queries as a parameter: log-spaced, 10 per decade,
--                     rounded to whole ms and deduplicated, 1 ms … 10 s:
--                     1 2 3 4 5 6 8 10 13 16 20 25 32 40 50 63 79 100 126 158 200 251 316
--                     398 501 631 794 1000 1259 1585 1995 2512 3162 3981 5012 6310 7943
--                     10000, plus one overflow bucket (> 10 s): 39 counts. Element i
--                     (1-based) counts bound[i-1] < response_ms <= bound[i].
--
-- ping_rollup_state holds the watermark: every ping_history row with id <= rolled_up_to_id
-- is reflected in its hour's row. Late rows (spool replays) have new ids, so they re-roll
-- their old hours. Changing the bucket bounds needs a re-roll: TRUNCATE ping_rollup_hourly
-- and set rolled_up_to_id to 0.

CREATE TABLE IF NOT EXISTS ping_rollup_hourly (
    target_gateway TEXT NOT NULL,
    hour           TIMESTAMPTZ NOT NULL,
    pings          INT NOT NULL,
    successes      INT NOT NULL,
    up_ms          BIGINT NOT NULL,
    observed_ms    BIGINT NOT NULL,
    median_gap_ms  DOUBLE PRECISION,
    max_ms         INT,
    latency_hist   INT[] NOT NULL,
    PRIMARY KEY (target_gateway, hour)
);

CREATE TABLE IF NOT EXISTS ping_rollup_state (
    one             BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    rolled_up_to_id BIGINT NOT NULL DEFAULT 0
);
INSERT INTO ping_rollup_state (one, rolled_up_to_id) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;

-- Adds one ping to a histogram of `buckets` counts: the transition of clawd_latency_hist.
CREATE OR REPLACE FUNCTION clawd_latency_hist_add(hist INT[], bucket INT, buckets INT)
RETURNS INT[] LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF hist IS NULL THEN
        hist := array_fill(0, ARRAY[buckets]);
    END IF;
    hist[bucket] := hist[bucket] + 1;
    RETURN hist;
END
$$;

DROP AGGREGATE IF EXISTS clawd_latency_hist(INT, INT);
CREATE AGGREGATE clawd_latency_hist(INT, INT) (
    SFUNC = clawd_latency_hist_add,
    STYPE = INT[]
);
