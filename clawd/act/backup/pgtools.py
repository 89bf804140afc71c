"""pg_dump / pg_restore: where they are, their version, their environment, running them.

The password reaches them only through PGPASSWORD in their environment (which only
clawd's user and root can read), never on a command line that `ps` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from clawd.act.backup.errors import BackupError
from clawd.config.sections import PostgresSettings
from clawd.keep.store.pg_errors import connect_error

DEBIAN_ROOT = Path("/usr/lib/postgresql")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)([\w.]*)")
PROBE_SECONDS = 30.0
MESSAGE_CHARS = 400
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded before any fork: the child only calls into it


def die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when clawd dies (Linux PR_SET_PDEATHSIG)."""

    def in_child() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # clawd died before prctl took effect

    return in_child


@dataclass(frozen=True, slots=True)
class PgTools:
    pg_dump: Path
    pg_restore: Path
    version: str  # e.g. "15.18"
    major: int


def _major_of_dir(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (-1,)


def find_bin_dir(configured: str | None) -> Path:
    """backup.pgBinDir, else the newest Debian client (it dumps every older server), else PATH."""
    if configured:
        path = Path(configured).expanduser()
        if not (path / "pg_dump").is_file():
            raise BackupError(f"backup.pgBinDir: no pg_dump in {path}")
        return path
    if DEBIAN_ROOT.is_dir():
        found = [p for p in DEBIAN_ROOT.glob("*/bin") if (p / "pg_dump").is_file()]
        if found:
            return max(found, key=_major_of_dir)
    on_path = shutil.which("pg_dump")
    if on_path:
        return Path(on_path).parent
    raise BackupError(
        "pg_dump not found: install the PostgreSQL client (Debian/Ubuntu: apt-get install "
        "postgresql-client) or set backup.pgBinDir to the directory holding pg_dump"
    )


def parse_version(text: str) -> tuple[str, int]:
    match = _VERSION.search(text)
    if match is None:
        raise BackupError(f"cannot read the version of pg_dump from {text.strip()[:80]!r}")
    return match.group(1) + match.group(2), int(match.group(1))


async def probe(configured: str | None) -> PgTools:
    bin_dir = await asyncio.to_thread(find_bin_dir, configured)
    pg_dump, pg_restore = bin_dir / "pg_dump", bin_dir / "pg_restore"
    async with time_limit(PROBE_SECONDS, "pg_dump --version"):
        out = await run_tool(
            [str(pg_dump), "--version"], None, what="pg_dump --version", capture_stdout=True
        )
    version, major = parse_version(out)
    return PgTools(pg_dump, pg_restore, version, major)


@contextlib.asynccontextmanager
async def time_limit(seconds: float, what: str) -> AsyncIterator[None]:
    """Cancel the work after `seconds` (killing its tool); BackupError naming `what`."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise BackupError(f"{what} did not finish within {seconds:g} s and was stopped") from None


def pg_env(pg: PostgresSettings, database: str | None = None) -> dict[str, str]:
    """The environment for pg_dump/pg_restore: connection and password, none of it in argv."""
    env = dict(os.environ)
    env.update(
        PGHOST=pg.host,
        PGPORT=str(pg.port),
        PGUSER=pg.user,
        PGDATABASE=database or pg.database,
        PGCONNECT_TIMEOUT=str(max(2, math.ceil(pg.connect_timeout_seconds))),
        PGAPPNAME="clawd-backup",
    )
    password = pg.password.get_secret_value()
    if password:
        env["PGPASSWORD"] = password
    return env


def dbname_arg(database: str) -> str:
    """`--dbname=` as a conninfo string: a plain name containing '=' would be misread."""
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"--dbname=dbname='{escaped}'"


def scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def one_line(text: str) -> str:
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


async def run_tool(
    argv: list[str],
    env: dict[str, str] | None,
    *,
    what: str,
    stdout: int = asyncio.subprocess.DEVNULL,
    capture_stdout: bool = False,
    secret: str = "",
) -> str:
    """Run a tool as an asyncio subprocess; its stdout (if captured) or stderr.

    BackupError with a one-line reason when it fails or is killed. When the caller is
    cancelled (stop, or its `time_limit`), the tool is killed first.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if capture_stdout else stdout,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            # Its own process group, so that stopping it also stops anything it started
            # (a wrapper's children would otherwise hold its pipes open).
            start_new_session=True,
            # And it dies with clawd: a SIGKILLed clawd must not leave pg_dump running.
            preexec_fn=die_with_parent(os.getpid()),
        )
    except OSError as exc:
        raise BackupError(f"cannot run {what} ({argv[0]}): {exc.strerror or exc}") from None
    try:
        out, err = await proc.communicate()
    except BaseException:  # cancelled, or the caller's time limit
        if proc.returncode is None:  # not reaped yet: the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
    message = scrub(one_line(err.decode(errors="replace")), secret)
    if proc.returncode is not None and proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise BackupError(f"{what} was killed by {name}" + (f": {message}" if message else ""))
    if proc.returncode != 0:
        raise BackupError(f"{what} failed (exit {proc.returncode}): {message or 'no message'}")
    return (out or b"").decode(errors="replace") if capture_stdout else message


async def connect(pg: PostgresSettings, database: str | None = None) -> asyncpg.Connection:
    """One asyncpg connection; DatabaseError with a one-line cause when it fails."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(**pg.connect_kwargs(database))
    except Exception as exc:
        raise connect_error(exc, pg) from None
    return conn
