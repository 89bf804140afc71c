"""Retention of PostgreSQL history: the leader deletes old rows in short batches.

Import the modules themselves (`clawd.retention.pruner`, `clawd.retention.connect`): a
package that re-exports its own modules is an import cycle (see tests/test_import_cycles.py).
"""
