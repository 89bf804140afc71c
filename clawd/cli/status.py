"""`clawd status`: the running daemon's live view, its files when none answers, and
`--why PEER`, the evidence behind one peer's status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from clawd.cli.codes import EXIT_NOT_RUNNING, EXIT_USER_ERROR
from clawd.config.load import load_settings
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging

STATUS_WAIT_SECONDS = 5.0


def cmd_status(args: argparse.Namespace) -> int:
    """The running daemon's live view; when none answers, the store's files, said to be
    old in the first line, and exit 3 (EXIT_NOT_RUNNING)."""
    from clawd.serve.control import NoAnswer, request

    settings = load_settings(args.config)
    if args.why is not None:
        return _status_why(settings, args.why, as_json=args.json)
    configure_logging("error")
    try:
        answer = asyncio.run(request(settings.home, "status", wait_seconds=STATUS_WAIT_SECONDS))
    except NoAnswer as exc:
        if args.live:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_NOT_RUNNING
        return _status_from_files(settings, str(exc), as_json=args.json)
    from clawd.serve.status import render_table

    if args.json:
        print(json.dumps({**answer, "live": True, "ageSeconds": 0.0}, indent=2))
        return 0
    print(render_table(answer.get("peers", []), answer.get("leader")))
    print(f"{answer.get('summary')}; postgres {answer.get('postgres')}")
    mdns = answer.get("mdns") or {}
    if mdns.get("name") != mdns.get("wanted"):
        print(
            f"announced over mDNS as {mdns.get('name')!r}: another machine announces "
            f"{mdns.get('wanted')!r}"
        )
    unproven = [p["gatewayId"] for p in answer.get("peers", []) if p.get("verified") is False]
    if unproven:
        # Pinged and shown, but never leader, helper or recipient of leader work.
        print(f"not proven over SSH (never lead): {', '.join(unproven)}")
    if held := answer.get("unverified"):
        print(f"{len(held)} announcement(s) not proven yet, not peers: see `clawd peer list`")
    for receiver in answer.get("alerts") or []:
        # Only the ones that need a look: failing, or notifications waiting.
        if receiver.get("failing_since") or receiver.get("pending"):
            print(
                f"notifications to {receiver.get('receiver')}: {receiver.get('pending')} waiting"
                + (
                    f", failing since {receiver['failing_since']}"
                    if receiver.get("failing_since")
                    else ""
                )
                + (f" ({receiver['last_error']})" if receiver.get("last_error") else "")
            )
    return 0


def _status_from_files(settings: Settings, error: str, *, as_json: bool) -> int:
    """No daemon: its files are its last view, not the fleet's state now."""
    import time
    from datetime import UTC, datetime

    from clawd.keep.store.json_store import JsonStore
    from clawd.serve.control import socket_path
    from clawd.serve.status import files_written_at, not_running_line, peer_rows, render_table

    snap = asyncio.run(JsonStore(settings.home).load(read_only=True)).snapshot
    rows = peer_rows(snap.instances, snap.peers, settings.instance.gateway_id)
    written_at = files_written_at(settings.home)
    sock = socket_path(settings.home)
    if as_json:
        doc = {
            "live": False,
            "running": False,
            "error": error,
            "socket": str(sock),
            "asOf": None
            if written_at is None
            else datetime.fromtimestamp(written_at, UTC).isoformat(),
            "ageSeconds": None if written_at is None else round(time.time() - written_at, 1),
            "leader": snap.leader,
            "peers": rows,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(not_running_line(f"no answer on {sock}", written_at))
        print(render_table(rows, snap.leader))
    return EXIT_NOT_RUNNING


def _status_why(settings: Settings, wanted: str, *, as_json: bool) -> int:
    """The evidence about one peer and the rule that decided its status (daemon only:
    the detector's state is in its memory)."""
    from clawd.decide.explain import render
    from clawd.serve.control import request
    from clawd.serve.daemon_client import daemon_running

    if not daemon_running(settings.home):
        print(
            "error: `clawd status --why` needs the running daemon (the evidence and the "
            "failure detector's history live in its memory); start it with `clawd run` "
            "or `systemctl start clawd`",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    answer = asyncio.run(request(settings.home, "status", why=wanted))
    if not answer.get("ok"):
        print(f"error: {answer.get('error')}", file=sys.stderr)
        return EXIT_USER_ERROR
    if as_json:
        print(json.dumps(answer["why"], indent=2))
    else:
        print(render(answer["why"]))
    return 0
