"""`clawd silence add|list|remove`: planned work recorded, shown, and not told."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
from datetime import datetime, timedelta

from clawd.config.load import load_settings
from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.logs import configure_logging
from clawd.core.model import utcnow
from clawd.core.schedule import parse_interval
from clawd.core.text import printable
from clawd.keep.history.timespec import parse_timestamp
from clawd.keep.store.pg_store import PgStore
from clawd.serve.alerts.silences import (
    PG_CURRENT,
    PG_INSERT,
    PG_REMOVE,
    Silence,
    from_row,
    new_id,
    read_file,
    write_file,
)

COLUMNS = ("ID", "MACHINE", "FROM", "UNTIL", "BY", "REASON")
MAX_SPAN = timedelta(days=366)


class SilenceError(ClawdError):
    """A silence command's input is wrong (one line: what, and what is allowed)."""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the silence commands to the `clawd` parser."""
    silence = sub.add_parser("silence", help="silence notifications (planned work)")
    cmds = silence.add_subparsers(dest="silence_command", required=True)
    add = cmds.add_parser("add", parents=[common], help="silence a machine (or --all) for a while")
    add.add_argument("gateway", nargs="?", metavar="GATEWAY", help="the machine's gateway id")
    add.add_argument("--all", action="store_true", help="every machine of the fleet")
    add.add_argument("--for", dest="span", metavar="DURATION", help='e.g. "2h", "30m", "1d"')
    add.add_argument("--until", metavar="TIME", help="ISO-8601, e.g. 2026-12-05T06:00")
    add.add_argument("--reason", required=True, help="why (shown with the silence)")
    add.set_defaults(func=cmd_silence_add)
    listing = cmds.add_parser("list", parents=[common], help="active and future silences")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_silence_list)
    remove = cmds.add_parser("remove", parents=[common], help="end a silence now")
    remove.add_argument("id", metavar="ID", help="the silence's id (see `clawd silence list`)")
    remove.set_defaults(func=cmd_silence_remove)


def _span(args: argparse.Namespace, now: datetime) -> datetime:
    if (args.span is None) == (args.until is None):
        raise SilenceError("say how long: either --for DURATION or --until TIME")
    if args.span is not None:
        try:
            ends = now + parse_interval(args.span)
        except ValueError as exc:
            raise SilenceError(f"--for: {exc}") from None
    else:
        ends = parse_timestamp(args.until, "--until")
    if ends <= now:
        raise SilenceError(f"--until {args.until}: that is in the past")
    if ends - now > MAX_SPAN:
        raise SilenceError("a silence lasts at most 366 days")
    return ends


def _target(args: argparse.Namespace) -> str | None:
    if args.all == (args.gateway is not None):
        raise SilenceError("name one machine (GATEWAY) or --all, not both or neither")
    return None if args.all else str(args.gateway)


async def _pg(settings: Settings) -> PgStore:
    return await PgStore.open(settings.postgres)


def cmd_silence_add(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging("warning")
    now = utcnow()
    reason = printable(args.reason).strip()
    if not reason:
        raise SilenceError("--reason: say why (it is shown with the silence)")
    silence = Silence(
        id=new_id(),
        gateway=_target(args),
        starts=now,
        ends=_span(args, now),
        reason=reason,
        author=f"{getpass.getuser()}@{socket.gethostname()}",
        created=now,
    )
    if settings.backend == "postgres":

        async def insert() -> None:
            store = await _pg(settings)
            try:
                async with store.pool.acquire() as conn:
                    await conn.execute(
                        PG_INSERT,
                        silence.id,
                        silence.gateway,
                        silence.starts,
                        silence.ends,
                        silence.reason,
                        silence.author,
                        silence.created,
                    )
            finally:
                await store.close()

        asyncio.run(insert())
    else:
        current = [s for s in read_file(settings.home) if s.ends > now]
        write_file(settings.home, [*current, silence])
    scope = "fleet-wide" if settings.backend == "postgres" else "on this machine"
    print(
        f"{silence.id}: {silence.gateway or 'every machine'} silenced {scope} until"
        f" {silence.ends.astimezone().isoformat(sep=' ', timespec='minutes')}"
    )
    return 0


def _current(settings: Settings) -> list[Silence]:
    now = utcnow()
    if settings.backend != "postgres":
        return sorted((s for s in read_file(settings.home) if s.ends > now), key=lambda s: s.starts)

    async def fetch() -> list[Silence]:
        store = await _pg(settings)
        try:
            async with store.pool.acquire() as conn:
                return [from_row(r) for r in await conn.fetch(PG_CURRENT, now)]
        finally:
            await store.close()

    return asyncio.run(fetch())


def cmd_silence_list(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging("warning")
    silences = _current(settings)
    if args.json:
        print(json.dumps({"silences": [s.to_json() for s in silences]}, indent=2))
        return 0
    if not silences:
        print("no silences")
        return 0

    def when(moment: datetime) -> str:
        return moment.astimezone().isoformat(sep=" ", timespec="minutes")

    table = [COLUMNS] + [
        (s.id, s.gateway or "(all)", when(s.starts), when(s.ends), s.author, s.reason)
        for s in silences
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0


def cmd_silence_remove(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging("warning")
    wanted = str(args.id)
    if settings.backend == "postgres":

        async def remove() -> bool:
            store = await _pg(settings)
            try:
                async with store.pool.acquire() as conn:
                    return str(await conn.execute(PG_REMOVE, wanted)) == "UPDATE 1"
            finally:
                await store.close()

        found = asyncio.run(remove())
    else:
        kept = read_file(settings.home)
        found = any(s.id == wanted for s in kept)
        if found:
            write_file(settings.home, [s for s in kept if s.id != wanted])
    if not found:
        raise SilenceError(f"no active silence {wanted!r} (see `clawd silence list`)")
    print(f"{wanted}: removed")
    return 0
