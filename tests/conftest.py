"""Shared fixtures: a real PostgreSQL server (see ``tests/pgserver.py``); a network-namespace
lab (see ``tests/netns.py``)."""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from netns import Lab, netns_available
from pgserver import (
    DSN_ENV,
    PG_NOT_FOUND_MESSAGE,
    TEST_DB_PASSWORD,
    TEST_DB_USER,
    BasePg,
    PgDatabase,
    PgServer,
    PgUnavailableError,
    find_pg_bin,
    start_pg,
)

if TYPE_CHECKING:
    from inprocess import InProcessDaemons

__all__ = ["TEST_DB_PASSWORD", "TEST_DB_USER", "PgDatabase"]

PRIVATE_DB_NAME = "claw_clan"


def _start_or_fail() -> BasePg:
    error: str | None = None
    try:
        return start_pg()
    except PgUnavailableError as exc:
        error = str(exc)  # fail outside the except block: no chained traceback
    pytest.fail(error, pytrace=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[BasePg]:
    """One PostgreSQL server for the whole session (external DSN, Docker or pg_ctl cluster)."""
    server = _start_or_fail()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_claw_role(pg_server: BasePg) -> str:
    """The login role ``claw`` (password ``TEST_DB_PASSWORD``), created once per session."""
    pg_server.create_role(TEST_DB_USER, TEST_DB_PASSWORD)
    return TEST_DB_USER


@pytest.fixture
def pg_db(pg_server: BasePg, pg_claw_role: str) -> Iterator[PgDatabase]:
    """A fresh database owned by ``claw``, dropped (backends terminated) after the test."""
    name = f"claw_test_{uuid.uuid4().hex[:16]}"
    pg_server.create_database(name, owner=pg_claw_role)
    try:
        yield pg_server.database(name, pg_claw_role, TEST_DB_PASSWORD)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def private_pg() -> Iterator[PgServer]:
    """A pg_ctl cluster of the test's own, free to stop/kill/restart.

    Has role ``claw`` (password ``TEST_DB_PASSWORD``) and database ``claw_clan`` owned by it;
    ``private_pg.database(PRIVATE_DB_NAME, "claw", TEST_DB_PASSWORD)`` gives its
    ``PgDatabase``. Commits are synchronous so committed rows survive ``kill()``.
    """
    if find_pg_bin() is None:
        hint = ""
        if os.environ.get(DSN_ENV):
            hint = f" ({DSN_ENV} is set, but this test stops/kills its own server)"
        pytest.fail(PG_NOT_FOUND_MESSAGE + hint, pytrace=False)
    server = PgServer(synchronous_commit=True)
    try:
        server.start()
        server.create_role(TEST_DB_USER, TEST_DB_PASSWORD)
        server.create_database(PRIVATE_DB_NAME, owner=TEST_DB_USER)
        yield server
    finally:
        server.cleanup()


_BLOCKBUSTER_ON = pytest.StashKey[bool]()


def _blockbuster_applies(item: pytest.Item) -> bool:
    """Async tests, unless marked `blocking_allowed("why")`.

    Only coroutine tests: sync tests call clawd's blocking helpers legitimately (no loop
    runs), and blockbuster only ever trips on the loop's thread while a loop runs.
    """
    function = getattr(item, "function", None)
    return (
        inspect.iscoroutinefunction(function)
        and item.get_closest_marker("blocking_allowed") is None
    )


@pytest.fixture(autouse=True)
def _no_blocking_on_the_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test if clawd's code makes a blocking call on the event loop thread.

    A stalled loop stalls every ping, so disk and socket work must run off-loop. Scoped to
    clawd's modules: a test's own set-up may block (it is not the daemon's loop).
    Autouse and set up before the test's other fixtures: async fixtures are covered too.
    """
    if not _blockbuster_applies(request.node):
        yield
        return
    from blocking import clawd_blockbuster

    with clawd_blockbuster():
        request.node.stash[_BLOCKBUSTER_ON] = True
        yield


@pytest.fixture
def no_blocking(request: pytest.FixtureRequest) -> Iterator[None]:
    """Blockbuster for this test even where the default leaves it off (a sync test that
    runs a loop of its own); a no-op where it is on already."""
    if request.node.stash.get(_BLOCKBUSTER_ON, False):
        yield
        return
    from blocking import clawd_blockbuster

    with clawd_blockbuster():
        yield


@pytest.fixture
async def inprocess_daemons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcessDaemons]:
    """Starts the real daemon in this test's loop (see tests/inprocess.py); every daemon
    still running at teardown is stopped, and fails the test if it takes over 5 s."""
    from inprocess import InProcessDaemons

    # Each daemon's home is its config.json's folder; no systemd or journald here.
    for name in ("CLAW_HOME", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)
    daemons = InProcessDaemons(tmp_path / "daemons")
    try:
        yield daemons
    finally:
        problems = await daemons.close()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Tests that configure logging (to a StringIO, a captured stderr) must not leak it."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A network-namespace lab, deleted afterwards (skipped where namespaces cannot be made)."""
    why = netns_available()
    if why is not None:
        pytest.skip(why)
    made = Lab()
    try:
        yield made
    finally:
        made.close()
