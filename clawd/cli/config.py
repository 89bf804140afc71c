"""`clawd config check`, `clawd config push` and `clawd reload`: config.json checked,
copied to the peers, put in force."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from clawd.cli.codes import EXIT_USER_ERROR
from clawd.config.load import load_settings
from clawd.config.permissions import warn_if_readable_by_others
from clawd.config.settings import RETIRED_KEYS, Settings, default_config_path
from clawd.core.logs import configure_logging


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, check_files=True)
    configure_logging("warning")
    warn_if_readable_by_others(args.config or default_config_path())
    warn_retired(settings)
    print(settings.summary())
    return 0


def warn_retired(settings: Settings) -> None:
    """An older config.json still starts; say once what it sets in vain."""
    import structlog

    for key in settings.retired_keys():
        structlog.get_logger("clawd.config").warning(
            "config_key_unused", key=key, fix=RETIRED_KEYS[key]
        )


def cmd_config_push(args: argparse.Namespace) -> int:
    """A validated config.json to every known peer.

    Through the daemon if one runs (it pushes the configuration it runs), else this file,
    validated first (a file clawd would reject is never pushed). Each peer's copy is shaped
    for its trust (peer_config.py): what was left out is said on its line.
    """
    from clawd.act.fleetops.distribution import PushOutcome, render_outcomes
    from clawd.config.reload import load_in_force
    from clawd.serve.control import request
    from clawd.serve.daemon_client import daemon_running

    settings, document = load_in_force(args.config, check_files=True)
    configure_logging("warning")
    if daemon_running(settings.home):
        wait = settings.distribution.timeout_seconds * 4 + 10
        answer = asyncio.run(request(settings.home, "config-push", wait_seconds=wait))
        if not answer.get("ok"):
            print(f"error: {answer.get('error')}", file=sys.stderr)
            return 1
        if answer.get("digest") not in (None, document.digest):
            print(
                "note: pushed the configuration the daemon runs, which differs from "
                "config.json now; `clawd reload` puts the file in force",
                file=sys.stderr,
            )
        outcomes = [PushOutcome.from_dict(o) for o in answer.get("outcomes", [])]
        retry_note = "the daemon pushes to failed peers again when they come back"
    else:
        outcomes = asyncio.run(_push_directly(settings, document.data))
        retry_note = "run again, or start the daemon to retry when they come back"
    if not outcomes:
        print("no peers known yet (see `clawd status`)")
        return 0
    print(render_outcomes(outcomes))
    # The first kind of trouble found, most serious first, is the one explained.
    notes = {
        "failed": f"some peers failed: {retry_note}",
        "fenced": "some peers follow another leader (a newer leadership epoch): their leader "
        "keeps their config.json; push from it, or through this daemon while it leads",
        "skipped": "some peers lack claw-clan: nothing was written there; the leading daemon "
        "reinstalls them (with this configuration)",
    }
    results = {o.result for o in outcomes}
    for result, note in notes.items():
        if result in results:
            print(note, file=sys.stderr)
            return 1
    return 0


async def _push_directly(settings: Settings, ours: dict[str, Any]) -> list[Any]:
    import dataclasses

    from clawd.act.fleetops.distribution import push_many
    from clawd.act.fleetops.leadership import addresses
    from clawd.act.fleetops.peer_config import connection_trust
    from clawd.act.fleetops.remote import Reach
    from clawd.config.settings import self_instance
    from clawd.decide.view import initial_view
    from clawd.keep.store.json_store import JsonStore
    from clawd.sources.pins import PINS_FILE_NAME, read_pins
    from clawd.sources.ssh_client import Connector

    snap = (await JsonStore(settings.home).load(read_only=True)).snapshot
    view = initial_view(self_instance(settings), snap.instances, snap.peers, snap.leader)
    pins = await asyncio.to_thread(read_pins, settings.home / PINS_FILE_NAME)
    peers = [
        dataclasses.replace(p, trust=connection_trust(settings, pins, gid))
        for gid, p in sorted(addresses(view, settings.instance.ssh_user).items())
    ]
    return await push_many(Reach(Connector(settings.ssh, settings.home)), peers, ours, settings)


def cmd_reload(args: argparse.Namespace) -> int:
    """Synchronous reload through the running daemon: fit for systemd's ExecReload=."""
    from clawd.serve.control import request

    settings = load_settings(args.config)
    answer = asyncio.run(request(settings.home, "reload"))
    if not answer.get("ok"):
        print(f"error: config rejected: {answer.get('error')}", file=sys.stderr)
        return EXIT_USER_ERROR
    changed = answer.get("changed") or []
    print(f"reloaded: {', '.join(changed)}" if changed else "reloaded: no change")
    return 0
