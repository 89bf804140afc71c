"""Shared fixtures: a real PostgreSQL server (see ``tests/pgserver.py``); a network-namespace
lab (see ``tests/netns.py``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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


@pytest.fixture
def no_blocking() -> Iterator[None]:
    """Fail the test if clawd's code makes a blocking call on the event loop thread.

    A stalled loop stalls every ping, so disk and socket work must run off-loop.
    """
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx("clawd"):
        yield


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
