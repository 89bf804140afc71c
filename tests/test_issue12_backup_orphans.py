"""Issue 12 item 6: a clawd SIGKILLed during a backup leaves no orphans.

A real `clawd run` (backend postgres) is SIGKILLed twice:

* while its pg_dump runs (held deterministically: the test holds an ACCESS EXCLUSIVE lock
  on ping_history, so pg_dump waits on it with the JSON archive already written): pg_dump
  dies with clawd; at the next start the `.dump.partial` and the JSON archive of that run
  (which has no manifest) are removed, one log line each, and `clawd backup list` shows
  neither;
* while its verification restores into a scratch database (pg_restore is a wrapper that
  waits before it runs the real one): pg_restore dies with clawd, and the next start drops
  the scratch database and says so.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from daemonproc import DaemonProcess
from helpers_backup import REAL_BIN, cdb_db, fill, scratch_databases, write_backup_daemon_config
from helpers_pg import connect
from pgserver import PgDatabase

__all__ = ["cdb_db"]

pytestmark = pytest.mark.timeout(150)

GONE_WITHIN = 5.0  # seconds after the SIGKILL for clawd's children to be gone
RESTORE_WAIT = 120  # the pg_restore wrapper's wait: far longer than the test looks


def _fake_bin(root: Path) -> Path:
    """pg_dump is the real one; pg_restore waits (same process) before a restore into a db."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "pg_dump").symlink_to(REAL_BIN / "pg_dump")
    wrapper = bin_dir / "pg_restore"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        f"real = {str(REAL_BIN / 'pg_restore')!r}\n"
        "if any(a.startswith('--dbname') for a in sys.argv[1:]):\n"
        f"    time.sleep({RESTORE_WAIT})\n"
        "os.execv(real, [real, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    return bin_dir


def _children(ppid: int) -> dict[int, str]:
    """pid -> command line of the live (not zombie) processes whose parent is `ppid`."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == ppid and fields[0] != "Z":
            found[int(stat.parent.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


async def _until(
    what: str, check: Callable[[], object], daemon: DaemonProcess, timeout: float = 30
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        daemon.read()
        if result := check():
            return result
        assert daemon.proc.poll() is None, f"clawd exited:\n{daemon.log[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{daemon.log[-3000:]}"
        await asyncio.sleep(0.05)


def _tool_child(daemon: DaemonProcess, tool: str, needle: str = "") -> int | None:
    for pid, cmdline in _children(daemon.proc.pid).items():
        if f"/{tool} " in cmdline and needle in cmdline:
            return pid
    return None


async def _pg_dump_waits_for_lock(conn: asyncpg.Connection, database: str) -> None:
    """pg_dump is mid-dump: connected, waiting for the lock on ping_history (bounded)."""
    for _ in range(600):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            " AND application_name = 'clawd-backup' AND wait_event_type = 'Lock'",
            database,
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("pg_dump never waited for the table lock")


async def _kill_and_check_gone(daemon: DaemonProcess, pid: int) -> float:
    """SIGKILL clawd; seconds until its child `pid` is gone (fails after GONE_WITHIN)."""
    daemon.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(daemon.proc.wait, 10)
    killed = time.monotonic()
    while _alive(pid):
        waited = time.monotonic() - killed
        assert waited < GONE_WITHIN, f"pid {pid} still runs {waited:.1f} s after clawd died"
        await asyncio.sleep(0.05)
    return time.monotonic() - killed


async def test_sigkill_during_dump_and_restore_leaves_nothing_behind(
    tmp_path: Path, cdb_db: PgDatabase
) -> None:
    await fill(cdb_db, pings=1000)
    home = tmp_path / "home"
    backups = home / "backups"
    write_backup_daemon_config(home, cdb_db, _fake_bin(tmp_path), verifyRestore="each")

    # 1. SIGKILL while pg_dump runs (waiting for the table lock the test holds).
    async with connect(cdb_db) as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE ping_history IN ACCESS EXCLUSIVE MODE")
        try:
            with DaemonProcess(home) as daemon:
                await daemon.await_log("event=ready")
                daemon.proc.send_signal(signal.SIGUSR1)
                dump_pid = await _until(
                    "pg_dump started", lambda: _tool_child(daemon, "pg_dump"), daemon
                )
                assert isinstance(dump_pid, int)
                await _pg_dump_waits_for_lock(holder, cdb_db.database)
                partials = sorted(p.name for p in backups.glob("*.dump.partial"))
                archives = sorted(p.name for p in backups.glob("*_json.tar.gz"))
                assert len(partials) == 1 and len(archives) == 1, sorted(backups.iterdir())
                await _kill_and_check_gone(daemon, dump_pid)
        finally:
            await tx.rollback()
    assert not list(backups.glob("*.manifest.json"))

    # 2. The next start removes the partial and the archive of the killed run, and says so.
    with DaemonProcess(home) as daemon:
        await daemon.await_log("event=ready")
        for name in (*partials, *archives):
            line = await daemon.await_log(f"{backups / name}", timeout=10)
            assert "event=backup_stale_file_removed" in line, line
            assert not (backups / name).exists()
        listed = daemon.cli("backup", "list")
        assert listed.returncode == 0, listed.stderr
        assert archives[0] not in listed.stdout, listed.stdout

        # 3. SIGKILL while the verification restores into a scratch database.
        daemon.proc.send_signal(signal.SIGUSR1)
        restore_pid = await _until(
            "pg_restore into a scratch database",
            lambda: _tool_child(daemon, "pg_restore", "--dbname"),
            daemon,
            timeout=60,
        )
        assert isinstance(restore_pid, int)
        cmdline = _children(daemon.proc.pid)[restore_pid]
        scratch = next(w for w in cmdline.split("'") if w.startswith("claw_clan_verify_"))
        assert scratch in await scratch_databases(cdb_db)
        await _kill_and_check_gone(daemon, restore_pid)
    assert scratch in await scratch_databases(cdb_db)  # clawd could not drop it itself

    # 4. The next start drops it, and says so.
    with DaemonProcess(home) as daemon:
        line = await daemon.await_log("event=scratch_database_dropped", timeout=30)
        assert f"database={scratch}" in line, line
        assert scratch not in await scratch_databases(cdb_db)
        assert daemon.stop() == 0
