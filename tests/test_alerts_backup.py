"""Issue 16: a failed backup is told (once), and so is the first good one after it.

A real `clawd run` on PostgreSQL whose backups first find no pg_dump (an empty pgBinDir),
then the real one (a live edit of config.json); SIGUSR1 starts each backup; the real
Apprise library posts to a webhook on loopback.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from daemonproc import DaemonProcess
from helpers_backup import cdb_db, write_backup_daemon_config
from pgserver import PgDatabase, find_pg_bin
from webhooks import WebhookReceiver

__all__ = ["cdb_db"]

WAIT = 60.0


def _edit(home: Path, **changes: object) -> None:
    config = json.loads((home / "config.json").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    tmp = home / ".config.json.swp"
    tmp.write_text(json.dumps(config))
    tmp.chmod(0o600)
    tmp.replace(home / "config.json")


async def logged(daemon: DaemonProcess, needle: str, times: int) -> None:
    """Until the daemon's log has `needle` `times` times (bounded)."""
    for _ in range(int(WAIT / 0.05)):
        daemon.read()
        if daemon.log.count(needle) >= times:
            return
        assert daemon.proc.poll() is None, daemon.log
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} not {times} times within {WAIT} s:\n{daemon.log}")


async def test_a_failed_backup_is_told_once_and_the_next_good_one_too(
    tmp_path: Path, cdb_db: PgDatabase
) -> None:
    pg_bin = find_pg_bin()
    assert pg_bin is not None, "PostgreSQL binaries not found: run scripts/install-system-deps.sh"
    empty = tmp_path / "no-tools"
    empty.mkdir()
    home = tmp_path / "home"
    async with WebhookReceiver() as receiver:
        write_backup_daemon_config(home, cdb_db, empty, verifyRestore="off")
        _edit(home, notify__apprise=[receiver.apprise_url], notify__retryMaxSeconds=2)
        daemon = DaemonProcess(home)
        try:
            await daemon.await_log("event=ready")
            for n in (1, 2):  # the same failure twice: told once
                daemon.proc.send_signal(signal.SIGUSR1)
                await logged(daemon, "event=backup_failed", n)
            await receiver.until(lambda posts: len(posts) >= 1, WAIT)
            await asyncio.sleep(2)
            assert receiver.titles() == ["clawd: backup failed on alpha"]
            assert cdb_db.password not in json.dumps(receiver.posts)

            _edit(home, backup__pgBinDir=str(pg_bin))
            await daemon.await_log("event=config_reloaded", WAIT)
            daemon.proc.send_signal(signal.SIGUSR1)
            await receiver.until(lambda posts: len(posts) >= 2, WAIT)
            assert receiver.titles()[1] == "clawd: backups work again on alpha"
        finally:
            assert daemon.stop() == 0, daemon.log
