"""`clawd run` + SIGUSR1 end to end: a verified backup, two quick signals during a backup
start exactly one more pg_dump, no password in `ps` or the log, `clawd backup now`
through the running daemon.

Skipped until daemon.py wires clawd.act.backup.manager.BackupManager in.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from daemonproc import DaemonProcess
from helpers_backup import CDB_PASSWORD, FakeBin, cdb_db, fill, write_backup_daemon_config
from pgserver import PgDatabase

from clawd.act.backup import manifest as manifests

__all__ = ["cdb_db"]


def _until(predicate: object, daemon: DaemonProcess, timeout: float = 20) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        daemon.read()
        assert time.monotonic() < deadline, f"not reached in {timeout}s:\n{daemon.log}"
        assert daemon.proc.poll() is None, f"clawd exited:\n{daemon.log}"
        time.sleep(0.02)


def test_sigusr1_backs_up_and_coalesces(tmp_path: Path, cdb_db: PgDatabase) -> None:
    import asyncio

    asyncio.run(fill(cdb_db, pings=1000))
    fake = FakeBin(tmp_path, delay=1.0)
    home = tmp_path / "home"
    write_backup_daemon_config(home, cdb_db, fake.dir)
    with DaemonProcess(home) as daemon:
        daemon.wait_log("event=ready")
        daemon.proc.send_signal(signal.SIGUSR1)
        _until(lambda: len(fake.dumps()) == 1, daemon)
        argv = Path(f"/proc/{fake.dumps()[0]}/cmdline").read_bytes()
        daemon.proc.send_signal(signal.SIGUSR1)
        daemon.proc.send_signal(signal.SIGUSR1)
        _until(lambda: daemon.log.count("event=backup_done") == 2, daemon, timeout=30)
        time.sleep(1.5)
        assert len(fake.dumps()) == 2  # one follow-up for two signals

        now = daemon.cli("backup", "now")
        assert now.returncode == 0, now.stderr
        assert len(fake.dumps()) == 3
        assert daemon.stop() == 0

    assert CDB_PASSWORD.encode() not in argv
    assert CDB_PASSWORD not in daemon.log
    found, _ = manifests.read_all(home / "backups")
    assert len(found) == 3
    assert all(m.verification and m.verification.restore == "ok" for m in found)
