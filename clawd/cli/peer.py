"""`clawd peer list | trust | forget`: the peers, how far each is trusted, and the
operator's say over that (issue 14: trusted membership)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from clawd.cli.codes import EXIT_USER_ERROR
from clawd.cli.peer_known import KnownPeers, known_peers
from clawd.config.load import load_settings
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging
from clawd.core.text import printable
from clawd.sources.pins import PINS_FILE_NAME, write_pins

LIST_WAIT_SECONDS = 5.0
# The daemon waits up to 10 s for its keeper; the answer's own line comes on top.
FORGET_WAIT_SECONDS = 15.0
COLUMNS = (
    ("GATEWAY", "gatewayId", 16),
    ("NAME", "name", 16),
    ("ADDRESS", "address", 21),
    ("SOURCE", "source", 6),
    ("VERIFIED", "verified", 8),
    ("TRUST", "trust", 11),
    ("PINNED KEY", "fingerprint", 50),
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add `clawd peer …` to the `clawd` parser."""
    from clawd.cli.peer_trust import cmd_peer_trust

    peer = sub.add_parser("peer", help="peers and their host-key trust").add_subparsers(
        dest="peer_command", required=True
    )
    plist = peer.add_parser(
        "list", parents=[common], help="every peer: source, verified, trust, pinned key"
    )
    plist.add_argument("--json", action="store_true", help="machine-readable output")
    plist.set_defaults(func=cmd_peer_list)
    trust = peer.add_parser(
        "trust", parents=[common], help="show GATEWAY's host key and pin it as the operator's"
    )
    trust.add_argument("gateway", metavar="GATEWAY", help="the peer's gateway id")
    trust.add_argument("--yes", action="store_true", help="do not ask (needed without a TTY)")
    trust.add_argument("--host", help="connect here (default: the peer's known address)")
    trust.add_argument("--port", type=int, help="SSH port (default: the peer's, or 22)")
    trust.set_defaults(func=cmd_peer_trust)
    forget = peer.add_parser(
        "forget", parents=[common], help="remove a found peer: its files and pin (history stays)"
    )
    forget.add_argument("gateway", metavar="GATEWAY", help="the peer's gateway id")
    forget.set_defaults(func=cmd_peer_forget)


# -- list ---------------------------------------------------------------------


def _row(known: KnownPeers, gid: str, live: dict[str, Any] | None) -> dict[str, Any]:
    inst = known.instance(gid)
    pin = known.pins.get(gid)
    ip = (live or {}).get("ip") or (inst.ip if inst else None)
    port = inst.ssh_port if inst else 22
    return {
        "gatewayId": gid,
        "name": (live or {}).get("name") or (inst.name if inst else gid),
        "address": f"{ip}:{port}" if ip else None,
        "source": known.source(gid),
        # Proven over SSH in the daemon's run: without a daemon nobody knows.
        "verified": None if live is None else bool(live.get("verified")),
        "trust": (live or {}).get("trust") or (pin.trust.value if pin else "none"),
        "fingerprint": pin.fingerprint if pin else None,
        "pinnedTrust": pin.trust.value if pin else None,
    }


def _cell(value: Any, width: int) -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = "-" if value is None else str(value)
    return printable(text)[:width].ljust(width)


def render_peers(rows: list[dict[str, Any]]) -> str:
    lines = [" ".join(title.ljust(width) for title, _, width in COLUMNS).rstrip()]
    for row in rows:
        lines.append(" ".join(_cell(row.get(key), width) for _, key, width in COLUMNS).rstrip())
    return "\n".join(lines)


def _announcement(entry: Any) -> str:
    if not isinstance(entry, dict):
        return printable(str(entry))
    gid, name, ip = entry.get("gatewayId"), entry.get("name"), entry.get("ip")
    extra = f" ({entry['reason']})" if entry.get("reason") else ""
    return printable(f"{gid} {name or ''} {ip or ''}".strip() + extra)


def cmd_peer_list(args: argparse.Namespace) -> int:
    """The running daemon's view (verified, trust) over the files; the files alone, said
    to be not live, when no daemon answers."""
    from clawd.serve.control import NoAnswer, request

    settings = load_settings(args.config)
    configure_logging("error")
    known = known_peers(settings)
    try:
        answer: dict[str, Any] | None = asyncio.run(
            request(settings.home, "status", wait_seconds=LIST_WAIT_SECONDS)
        )
        reason = None
    except NoAnswer as exc:
        answer, reason = None, str(exc)
    if answer is None:
        rows = [_row(known, gid, None) for gid in known.ids()]
        unverified: list[Any] = []
    else:
        live = {r["gatewayId"]: r for r in answer.get("peers", [])}
        ids = sorted({*live, *known.static})
        rows = [_row(known, gid, live.get(gid, {})) for gid in ids]
        unverified = list(answer.get("unverified") or [])
    if args.json:
        doc = {"live": answer is not None, "peers": rows, "unverified": unverified}
        if reason is not None:
            doc["error"] = reason
        print(json.dumps(doc, indent=2))
        return 0
    if reason is not None:
        print(f"not live: {reason}; showing the files (verified is only known to a daemon)")
    print(render_peers(rows))
    if unverified:
        print(f"unverified announcements ({len(unverified)}, not peers until proven over SSH):")
        for entry in unverified:
            print(f"  {_announcement(entry)}")
    return 0


# -- forget --------------------------------------------------------------------


def cmd_peer_forget(args: argparse.Namespace) -> int:
    """Through the running daemon when one answers (it stops pinging the peer and deletes
    its files itself), else the files directly; then the pin. PostgreSQL keeps the rows."""
    from clawd.daemon.forget import static_note
    from clawd.serve.control import NoAnswer, request

    settings = load_settings(args.config)
    configure_logging("error")
    gid: str = args.gateway
    known = known_peers(settings)
    if gid in known.static:
        print(f"error: {static_note(gid)}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        answer = asyncio.run(
            request(settings.home, "peer-forget", FORGET_WAIT_SECONDS, gatewayId=gid)
        )
    except NoAnswer:
        answer = None
    done: list[str] = []
    if answer is not None and answer.get("ok"):
        done.append("the daemon dropped it (no more pings), its peer file and fleet.json entry")
    elif answer is not None and not answer.get("unknown"):
        print(f"error: {answer.get('error')}", file=sys.stderr)
        return EXIT_USER_ERROR if answer.get("static") else 1
    else:  # no daemon, or one that does not know it: the files may still have it
        removed = asyncio.run(_forget_files(settings, gid))
        done.extend(removed)
    if gid in known.pins:
        pins = dict(known.pins)
        del pins[gid]
        write_pins(settings.home / PINS_FILE_NAME, pins)
        done.append(f"its pinned key ({known.pins[gid].fingerprint})")
    if not done:
        print(
            f"error: no peer {gid!r} (not in the daemon's view, peers/, fleet.json or "
            f"{PINS_FILE_NAME}); `clawd peer list` shows the peers",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    print(f"forgot {gid}: {'; '.join(done)}. History (incidents, PostgreSQL rows) is kept.")
    return 0


async def _forget_files(settings: Settings, gid: str) -> list[str]:
    from clawd.keep.store.json_store import JsonStore

    store = JsonStore(settings.home)
    removed = []
    if await store.remove_peer(gid):
        removed.append(f"peers/{gid}.json")
    if await store.drop_from_fleet(gid):
        removed.append("its fleet.json entry")
    return removed
