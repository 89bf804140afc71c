"""Backups: schedule, pg_dump, JSON archive, manifest, rotation, verification, restore.

Import the modules themselves (`clawd.act.backup.manager`, `clawd.act.backup.commands`); this
package file stays empty: a package that re-exports its own modules is an import cycle.
"""
