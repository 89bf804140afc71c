"""A real PostgreSQL server for the test suite.

Three backends share one API (:class:`BasePg`):

* :class:`ExternalPg` -- an existing server named by ``CLAW_TEST_PG_DSN`` (a superuser DSN);
* :class:`ContainerPg` -- ``postgres:17-alpine`` through testcontainers, when a Docker engine
  answers;
* :class:`PgServer` -- a throwaway cluster made with ``initdb``/``pg_ctl`` from the system
  PostgreSQL binaries (run as the ``postgres`` user when we are root).

:func:`start_pg` picks them in that order. Only :class:`PgServer` can be killed and restarted.
This is a plain module (no pytest imports) so that scripts and benchmarks can use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import asyncpg

__all__ = [
    "DSN_ENV",
    "PG_NOT_FOUND_MESSAGE",
    "TEST_DB_PASSWORD",
    "TEST_DB_USER",
    "BasePg",
    "ContainerPg",
    "ExternalPg",
    "PgDatabase",
    "PgServer",
    "PgUnavailableError",
    "docker_available",
    "find_pg_bin",
    "make_dsn",
    "start_pg",
]

T = TypeVar("T")

TEST_DB_USER = "claw"
TEST_DB_PASSWORD = "s3cret-test-pw"  # fixed credential of throwaway test servers

PG_NOT_FOUND_MESSAGE = (
    "PostgreSQL server binaries not found: run `bash scripts/install-system-deps.sh` "
    "(apt-get install postgresql) or set CLAW_TEST_PG_DSN"
)

DSN_ENV = "CLAW_TEST_PG_DSN"
# Optional: force one backend ("external", "docker" or "pgctl") instead of auto-detection.
BACKEND_ENV = "CLAW_TEST_PG_BACKEND"
# Optional: a directory holding initdb/pg_ctl, tried before the system locations.
BIN_ENV = "CLAW_TEST_PG_BIN"

DOCKER_IMAGE = "postgres:17-alpine"
SQL_TIMEOUT = 30.0  # seconds, for one admin statement (connect + execute)
_LOG_TAIL_LINES = 40


class PgUnavailableError(RuntimeError):
    """No PostgreSQL server can be provided on this machine."""


class NotSupportedByBackendError(RuntimeError):
    """The operation (kill, restart) needs a server the tests own (:class:`PgServer`)."""


# --------------------------------------------------------------------------- helpers


def quote_ident(name: str) -> str:
    """Quote an SQL identifier."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    if "\x00" in value:
        raise ValueError("SQL literal contains NUL")
    return "'" + value.replace("'", "''") + "'"


def make_dsn(host: str, port: int, database: str, user: str, password: str | None) -> str:
    """A ``postgresql://`` URL; a unix-socket directory as host goes into the query string."""
    auth = quote(user, safe="")
    if password is not None:
        auth += ":" + quote(password, safe="")
    db = quote(database, safe="")
    if host.startswith("/"):
        return f"postgresql://{auth}@/{db}?host={quote(host, safe='')}&port={port}"
    netloc = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}@{netloc}:{port}/{db}"


def _run_coro_in_thread(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on a private event loop in a worker thread.

    Works whether or not the calling thread already runs an event loop (async tests, sync
    fixtures), at the price of blocking the caller for the duration.
    """
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=runner, name="pgserver-sql", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if thread.is_alive():
        raise RuntimeError(f"SQL helper did not finish within {timeout + 5.0:.0f} s")
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def _port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _version_key(path: Path) -> tuple[int, ...]:
    nums = re.findall(r"\d+", path.name)
    return tuple(int(n) for n in nums) if nums else (-1,)


def find_pg_bin() -> Path | None:
    """The directory holding the newest PostgreSQL server binaries (initdb, pg_ctl), or None.

    Looks at ``$CLAW_TEST_PG_BIN``, then ``/usr/lib/postgresql/<ver>/bin`` (Debian),
    ``/usr/pgsql-<ver>/bin`` (RHEL), then ``initdb`` on ``$PATH``.
    """
    override = os.environ.get(BIN_ENV)
    if override:
        path = Path(override)
        return path if (path / "initdb").is_file() else None
    candidates: list[Path] = []
    for pattern_root, pattern in (
        (Path("/usr/lib/postgresql"), "*/bin"),
        (Path("/usr"), "pgsql-*/bin"),
    ):
        if pattern_root.is_dir():
            candidates.extend(p for p in pattern_root.glob(pattern) if (p / "initdb").is_file())
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.parent))
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    return None


def docker_available(timeout: float = 5.0) -> bool:
    """True when a Docker engine answers ``docker info`` within ``timeout`` seconds."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        proc = subprocess.run(
            [docker, "info"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PgDatabase:
    """Connection parameters of one test database."""

    host: str
    port: int
    database: str
    user: str
    password: str

    @property
    def dsn(self) -> str:
        return make_dsn(self.host, self.port, self.database, self.user, self.password)


# --------------------------------------------------------------------------- base API


class BasePg(ABC):
    """What every backend offers: connection data, admin SQL, and lifecycle hooks."""

    host: str
    port: int
    superuser: str
    superuser_password: str
    admin_database: str = "postgres"

    # ---- lifecycle (backend specific)

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self, mode: str = "fast") -> None: ...

    @abstractmethod
    def kill(self) -> None: ...

    @abstractmethod
    def start_again(self) -> None: ...

    @abstractmethod
    def is_running(self) -> bool: ...

    @abstractmethod
    def cleanup(self) -> None: ...

    def describe(self) -> str:
        return f"{type(self).__name__}({self.host}:{self.port})"

    def __enter__(self) -> BasePg:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ---- connection data

    def dsn(self, database: str, user: str | None = None, password: str | None = None) -> str:
        """URL for ``database``; without ``user``, the superuser and its password."""
        if user is None:
            user = self.superuser
            if password is None:
                password = self.superuser_password
        return make_dsn(self.host, self.port, database, user, password)

    def database(self, database: str, user: str, password: str) -> PgDatabase:
        return PgDatabase(self.host, self.port, database, user, password)

    # ---- admin SQL (superuser, sync; safe to call from inside a running event loop)

    def _admin_connect_kwargs(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.superuser,
            "password": self.superuser_password,
            "database": self.admin_database,
            "timeout": 10.0,
            "ssl": False,
        }

    def _admin(self, statements: Sequence[str], fetch: str | None = None) -> Any:
        """Run ``statements`` (each in autocommit) and optionally ``fetchval(fetch)``."""
        kwargs = self._admin_connect_kwargs()

        async def work() -> Any:
            conn = await asyncpg.connect(**kwargs)
            try:
                for stmt in statements:
                    await conn.execute(stmt, timeout=SQL_TIMEOUT)
                if fetch is not None:
                    return await conn.fetchval(fetch, timeout=SQL_TIMEOUT)
                return None
            finally:
                await conn.close(timeout=5.0)

        return _run_coro_in_thread(work(), SQL_TIMEOUT + 15.0)

    def execute(self, sql: str) -> None:
        """Execute ``sql`` as the superuser in the admin database."""
        self._admin([sql])

    def fetchval(self, sql: str) -> Any:
        return self._admin([], fetch=sql)

    def create_role(self, name: str, password: str) -> None:
        """Create a LOGIN role, or reset its password if it exists (idempotent)."""
        ident, pw = quote_ident(name), quote_literal(password)
        exists = self.fetchval(f"SELECT 1 FROM pg_roles WHERE rolname = {quote_literal(name)}")
        if exists:
            self.execute(f"ALTER ROLE {ident} WITH LOGIN PASSWORD {pw}")
        else:
            self.execute(f"CREATE ROLE {ident} WITH LOGIN PASSWORD {pw}")

    def create_database(self, name: str, owner: str) -> None:
        self.execute(f"CREATE DATABASE {quote_ident(name)} OWNER {quote_ident(owner)}")

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, terminating its backends first (PostgreSQL 13+)."""
        self.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def server_version(self) -> int:
        """The server's major version, e.g. 15."""
        num = int(self.fetchval("SELECT current_setting('server_version_num')"))
        return num // 10000

    def check_superuser(self) -> None:
        if not self.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            raise PgUnavailableError(
                f"{self.describe()}: user {self.superuser!r} is not a superuser; "
                f"{DSN_ENV} must name a superuser"
            )


# --------------------------------------------------------------------------- pg_ctl cluster


class PgServer(BasePg):
    """A private cluster in a temporary directory, run with ``initdb``/``pg_ctl``.

    Tuned for tests (fsync off, no full page writes). ``synchronous_commit`` defaults to off
    as well; pass ``synchronous_commit=True`` for tests that ``kill()`` the server and expect
    committed rows to survive (with it off, commits of the last ~0.6 s can be lost on a crash).
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        synchronous_commit: bool = False,
        max_connections: int = 200,
        extra_options: Sequence[str] = (),
    ) -> None:
        found = bin_dir if bin_dir is not None else find_pg_bin()
        if found is None:
            raise PgUnavailableError(PG_NOT_FOUND_MESSAGE)
        self.bin_dir: Path = found
        self.host = "127.0.0.1"
        self.port = 0
        self.superuser = "postgres"
        self.superuser_password = secrets.token_urlsafe(24)
        self.synchronous_commit = synchronous_commit
        self.max_connections = max_connections
        self.extra_options = tuple(extra_options)
        self.as_postgres_user = os.geteuid() == 0
        self.tmp_dir: Path | None = None
        self.data_dir: Path = Path()
        self.socket_dir: Path = Path()
        self.log_file: Path = Path()

    # ---- process helpers

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / tool), *args]
        if self.as_postgres_user:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError(
                    "running as root but `runuser` is missing; cannot start postgres"
                )
            cmd = [runuser, "-u", "postgres", "--", *cmd]
        return cmd

    def _run(
        self, tool: str, *args: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
        try:
            return subprocess.run(
                self._cmd(tool, *args),
                cwd=self.tmp_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise self._error(f"{tool} timed out after {timeout:.0f} s") from exc

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _error(
        self, what: str, proc: subprocess.CompletedProcess[str] | None = None
    ) -> RuntimeError:
        parts = [f"PostgreSQL ({self.data_dir}, port {self.port}): {what}"]
        if proc is not None:
            out = (proc.stdout + proc.stderr).strip()
            parts.append(f"exit status {proc.returncode}; output:\n{out}")
        parts.append(f"--- tail of {self.log_file} ---\n{self.log_tail()}")
        return RuntimeError("\n".join(parts))

    def _chown(self, path: Path) -> None:
        if self.as_postgres_user:
            shutil.chown(path, user="postgres", group="postgres")

    # ---- lifecycle

    def start(self) -> None:
        if self.tmp_dir is not None:
            raise RuntimeError("PgServer.start() called twice; use start_again()")
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="claw-pg-", dir="/tmp"))
        try:
            self._init_cluster()
            self._start_on_free_port()
        except BaseException:
            self.cleanup()
            raise

    def _init_cluster(self) -> None:
        assert self.tmp_dir is not None
        self.tmp_dir.chmod(0o755)
        self._chown(self.tmp_dir)
        self.data_dir = self.tmp_dir / "data"
        self.socket_dir = self.tmp_dir / "sock"
        self.log_file = self.tmp_dir / "postgres.log"
        self.data_dir.mkdir(mode=0o700)
        self.socket_dir.mkdir(mode=0o755)
        for d in (self.data_dir, self.socket_dir):
            self._chown(d)
        pwfile = self.tmp_dir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            proc = self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-sync",
                timeout=120.0,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise self._error("initdb failed", proc)

    def _options(self) -> str:
        opts = [
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            f"-c synchronous_commit={'on' if self.synchronous_commit else 'off'}",
            "-c full_page_writes=off",
            f"-c max_connections={self.max_connections}",
            *self.extra_options,
        ]
        return " ".join(opts)

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        return self._run(
            "pg_ctl",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            self._options(),
            "start",
            timeout=45.0,
        )

    def _start_on_free_port(self) -> None:
        # Another process may grab the port between bind(0) and the postmaster's bind: retry.
        last: subprocess.CompletedProcess[str] | None = None
        for _attempt in range(3):
            self.port = _free_port(self.host)
            last = self._pg_ctl_start()
            if last.returncode == 0:
                self._wait_ready()
                return
            if "could not bind" not in self.log_tail(10) or self.is_running():
                break
        raise self._error("pg_ctl start failed", last)

    def _wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the server accepts an authenticated query (bounded)."""
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        for _ in range(int(timeout / 0.1) + 1):
            if time.monotonic() >= deadline:
                break
            try:
                if self.fetchval("SELECT 1") == 1:
                    return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                last_exc = exc
            time.sleep(0.1)
        raise self._error(f"server not ready after {timeout:.0f} s (last error: {last_exc!r})")

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first.strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        if self.tmp_dir is None:
            return False
        pid = self.postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def stop(self, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"bad stop mode {mode!r}")
        if not self.is_running():
            return
        proc = self._run(
            "pg_ctl", "-w", "-t", "30", "-D", str(self.data_dir), "-m", mode, "stop", timeout=45.0
        )
        if proc.returncode != 0 and self.is_running():
            raise self._error(f"pg_ctl stop -m {mode} failed", proc)

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); reap orphaned children; wait until the port closes."""
        pid = self.postmaster_pid()
        if pid is None or not _pid_alive(pid):
            raise self._error("kill(): server is not running")
        children = _child_pids(pid)
        os.kill(pid, signal.SIGKILL)
        # Backends notice the postmaster's death and exit on their own; a restart is refused
        # while any of them still holds the old shared memory, so make sure they are gone.
        if not _wait_until(lambda: not any(_pid_alive(c) for c in children), timeout=5.0):
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        ok = _wait_until(
            lambda: (
                not _pid_alive(pid)
                and not _port_accepts(self.host, self.port, 0.2)
                and not any(_pid_alive(c) for c in children)
            ),
            timeout=10.0,
        )
        if not ok:
            raise self._error("kill(): server still accepting connections 10 s after SIGKILL")

    def start_again(self) -> None:
        """Start the stopped (or killed) cluster again on the same data dir and port."""
        if self.tmp_dir is None:
            raise RuntimeError("start_again() before start()")
        if self.is_running():
            raise self._error("start_again(): server is already running")
        self._remove_stale_locks()
        proc = self._pg_ctl_start()
        if proc.returncode != 0 and not self.is_running():
            self._remove_stale_locks()
            proc = self._pg_ctl_start()
        if proc.returncode != 0:
            raise self._error("pg_ctl start (again) failed", proc)
        self._wait_ready()

    def _remove_stale_locks(self) -> None:
        """Remove the lock files of a dead postmaster.

        PostgreSQL only ignores a stale ``postmaster.pid`` when ``kill(pid, 0)`` fails; a killed
        postmaster that its new parent (PID 1) has not reaped yet is a zombie that still
        "exists", and the restart is refused. We know better: it is our cluster and the pid is
        dead or a zombie, so the data-dir and socket lock files can go.
        """
        pid = self.postmaster_pid()
        if pid is None or _pid_alive(pid):
            return
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def cleanup(self) -> None:
        if self.tmp_dir is None:
            return
        try:
            if self.is_running():
                try:
                    self.stop("fast")
                except RuntimeError:
                    with contextlib.suppress(RuntimeError):
                        self.stop("immediate")
                if self.is_running():
                    with contextlib.suppress(RuntimeError):
                        self.kill()
        finally:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None

    def describe(self) -> str:
        return f"PgServer({self.host}:{self.port}, {self.data_dir}, bin {self.bin_dir})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _child_pids(ppid: int) -> list[int]:
    pids: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(ppid):
            pids.append(int(entry.name))
    return pids


def _wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return bool(predicate())


# --------------------------------------------------------------------------- external server


class ExternalPg(BasePg):
    """An existing server named by a superuser DSN; the tests do not own its lifecycle."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise PgUnavailableError(
                f"{DSN_ENV} must be a postgresql:// URL, got scheme {parts.scheme!r}"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.host = unquote(parts.hostname or "") or query.get("host", "127.0.0.1")
        self.port = parts.port or int(query.get("port", "5432"))
        self.superuser = unquote(parts.username or "") or query.get("user", "postgres")
        self.superuser_password = unquote(parts.password or "") or query.get("password", "")
        self.admin_database = unquote(parts.path.lstrip("/")) or query.get("dbname", "postgres")
        self._admin_dsn = dsn

    def _admin_connect_kwargs(self) -> dict[str, Any]:
        # The DSN as given, so its sslmode and other options apply to admin connections.
        return {"dsn": self._admin_dsn, "timeout": 10.0}

    def start(self) -> None:
        try:
            self.check_superuser()
        except PgUnavailableError:
            raise
        except Exception as exc:
            raise PgUnavailableError(f"cannot use {DSN_ENV} ({self.describe()}): {exc!r}") from exc

    def _unsupported(self, what: str) -> NotSupportedByBackendError:
        return NotSupportedByBackendError(
            f"{what} is not possible on the external server from {DSN_ENV}: tests that stop or "
            "kill PostgreSQL need a server of their own (unset it to use the pg_ctl cluster)"
        )

    def stop(self, mode: str = "fast") -> None:
        raise self._unsupported("stop()")

    def kill(self) -> None:
        raise self._unsupported("kill()")

    def start_again(self) -> None:
        raise self._unsupported("start_again()")

    def is_running(self) -> bool:
        return _port_accepts(self.host, self.port) if not self.host.startswith("/") else True

    def cleanup(self) -> None:
        """Nothing to do: the server belongs to someone else."""


# --------------------------------------------------------------------------- testcontainers


class ContainerPg(BasePg):
    """``postgres:17-alpine`` run by testcontainers (needs a Docker engine)."""

    def __init__(self, image: str = DOCKER_IMAGE) -> None:
        self.image = image
        self.host = "127.0.0.1"
        self.port = 0
        self.superuser = "postgres"
        self.superuser_password = secrets.token_urlsafe(24)
        self._container: Any = None

    def start(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # testcontainers' own deprecation noise
            from testcontainers.postgres import PostgresContainer

            container = PostgresContainer(
                self.image,
                username=self.superuser,
                password=self.superuser_password,
                dbname="postgres",
            )
            container.start()
        self._container = container
        self.host = container.get_container_host_ip()
        if self.host == "localhost":
            self.host = "127.0.0.1"
        self.port = int(container.get_exposed_port(5432))

    def stop(self, mode: str = "fast") -> None:
        self.cleanup()

    def kill(self) -> None:
        raise NotImplementedError("kill() is only supported by the pg_ctl PgServer backend")

    def start_again(self) -> None:
        raise NotImplementedError("start_again() is only supported by the pg_ctl PgServer backend")

    def is_running(self) -> bool:
        return self._container is not None and _port_accepts(self.host, self.port)

    def cleanup(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                container.stop()


# --------------------------------------------------------------------------- factory


def start_pg() -> BasePg:
    """Start (or attach to) a server: ``$CLAW_TEST_PG_DSN``, then Docker, then ``pg_ctl``.

    Raises :class:`PgUnavailableError` (with :data:`PG_NOT_FOUND_MESSAGE`) when none works.
    ``$CLAW_TEST_PG_BACKEND`` (external|docker|pgctl) forces one backend.
    """
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    dsn = os.environ.get(DSN_ENV, "").strip()
    server: BasePg
    if forced == "external" or (not forced and dsn):
        if not dsn:
            raise PgUnavailableError(f"{BACKEND_ENV}=external but {DSN_ENV} is not set")
        server = ExternalPg(dsn)
    elif forced == "docker" or (not forced and docker_available()):
        server = ContainerPg()
    elif forced in ("", "pgctl"):
        server = PgServer()
    else:
        raise PgUnavailableError(f"{BACKEND_ENV} must be external, docker or pgctl, not {forced!r}")
    server.start()
    return server
