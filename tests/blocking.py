"""Blockbuster as the test suite runs it: on for every async test (see conftest).

Scoped to clawd's modules: a blocking call fails the test when clawd's code is on the
stack, e.g. a file read in a component's coroutine. Two kinds of frames may block:

* libraries' own start-up reads clawd cannot move off the loop (asyncpg looks for
  ~/.pgpass and ~/.postgresql certificates while it parses connect arguments), and the
  one deliberate blocking call in clawd (`ALLOWED`, with its reason);
* a test's set-up helper that calls one of clawd's blocking helpers on purpose (writing
  a manifest, reading incidents.jsonl): mark it `@setup_may_block`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from blockbuster import BlockBuster

F = TypeVar("F", bound=Callable[..., object])

ALLOWED: list[tuple[str, set[str]]] = [
    ("asyncpg/connect_utils.py", {"_parse_connect_dsn_and_args"}),
    # On purpose: a failed or cancelled backup deletes its partial file synchronously, so
    # the deletion also happens when the task is being cancelled (one unlink).
    ("clawd/act/backup/files.py", {"discard"}),
]
_SETUP: list[tuple[str, set[str]]] = []


def setup_may_block(function: F) -> F:
    """A test helper doing blocking set-up (on purpose, as a user's files would be made)."""
    code = function.__code__
    _SETUP.append((code.co_filename, {code.co_name}))
    return function


@contextmanager
def clawd_blockbuster() -> Iterator[BlockBuster]:
    busters = BlockBuster("clawd")
    for checked in busters.functions.values():
        for filename, functions in (*ALLOWED, *_SETUP):
            checked.can_block_in(filename, functions)
    busters.activate()
    try:
        yield busters
    finally:
        busters.deactivate()
