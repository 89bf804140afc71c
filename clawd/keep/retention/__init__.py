"""Retention of PostgreSQL history: the leader deletes old rows in short batches.

Import the modules themselves (`clawd.keep.retention.pruner`, `clawd.keep.retention.connect`): a
package that re-exports its own modules is an import cycle (see tests/test_import_cycles.py).
"""
