"""History from PostgreSQL: incident timelines and per-peer availability reports."""
