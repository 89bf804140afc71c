"""Skills under `<home>/skills`, synced from the shared repository and audited.

Import the modules themselves (`clawd.act.skills.syncer`, `clawd.act.skills.results`): a package
that re-exports its own modules is an import cycle (see tests/test_import_cycles.py).
"""
