"""`clawd incidents`, `clawd report`: history from PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from clawd.config.load import load_settings
from clawd.config.settings import Settings
from clawd.core.errors import HistoryError
from clawd.core.model import EventType

if TYPE_CHECKING:
    import asyncpg

NEEDS_POSTGRES = (
    'history needs the PostgreSQL backend: set "backend": "postgres" in config.json '
    '(see README "Switching backends")'
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _window_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--since",
        metavar="DURATION",
        help=f"the last DURATION, e.g. 30m, 24h, 7d (default {default})",
    )
    parser.add_argument(
        "--from", dest="start", metavar="TIME", help="ISO-8601 start, e.g. 2024-05-01T00:00"
    )
    parser.add_argument("--to", dest="end", metavar="TIME", help="ISO-8601 end (default: now)")
    parser.add_argument("--gateway", metavar="ID", help="only this peer (its gatewayId)")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the history commands to the `clawd` parser."""
    inc = sub.add_parser("incidents", parents=[common], help="incident timeline (PostgreSQL)")
    _window_options(inc, "24h")
    inc.add_argument("--type", choices=[e.value for e in EventType], help="only this event")
    inc.add_argument("--limit", type=_positive, default=200, help="newest N (default 200)")
    inc.add_argument("--json", action="store_true", help="machine-readable output")
    inc.set_defaults(func=cmd_incidents)

    rep = sub.add_parser("report", parents=[common], help="per-peer availability (PostgreSQL)")
    _window_options(rep, "7d")
    fmt = rep.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--csv", action="store_true", help="CSV, one row per peer")
    rep.set_defaults(func=cmd_report)


def _run(args: argparse.Namespace, work: Callable[[asyncpg.Pool], Coroutine[Any, Any, str]]) -> int:
    """Open PostgreSQL (no migrations: a reporting role may lack DDL rights), run, print."""
    from clawd.core.logs import configure_logging
    from clawd.keep.history.db import open_store, run_reading

    settings: Settings = load_settings(args.config)
    if settings.backend != "postgres":
        raise HistoryError(NEEDS_POSTGRES)
    configure_logging("warning")

    async def main() -> str:
        store = await open_store(settings.postgres)
        try:
            return await run_reading(store, work)
        finally:
            await store.close()

    print(asyncio.run(main()))
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    from clawd.keep.history import render
    from clawd.keep.history.collect import fetch_incidents
    from clawd.keep.history.timespec import resolve_window

    window = resolve_window(args.since, args.start, args.end, default_since="24h")

    async def work(pool: asyncpg.Pool) -> str:
        rows = await fetch_incidents(pool, window, args.gateway, args.type, args.limit)
        if args.json:
            return render.incidents_json(rows)
        more = f" (newest {args.limit} shown)" if len(rows) == args.limit else ""
        return render.incidents_table(rows, f"incidents {window.describe()}{more}")

    return _run(args, work)


def cmd_report(args: argparse.Namespace) -> int:
    from clawd.keep.history import render
    from clawd.keep.history.collect import build_report
    from clawd.keep.history.timespec import resolve_window

    window = resolve_window(args.since, args.start, args.end, default_since="7d")

    async def work(pool: asyncpg.Pool) -> str:
        report = await build_report(pool, window, datetime.now(UTC), args.gateway)
        if args.json:
            return render.report_json(report)
        if args.csv:
            return render.report_csv(report)
        return render.report_table(report, f"report {window.describe()}")

    return _run(args, work)
