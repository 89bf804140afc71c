"""`clawd` command line. User errors print `error: …` and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from clawd import __version__, cli_history, cli_output, cli_skills
from clawd.errors import ClawdError
from clawd.logs import configure_logging
from clawd.permissions import warn_if_readable_by_others
from clawd.settings import Settings, default_config_path, load_settings

EXIT_USER_ERROR = 2
# `clawd status` when no daemon answers (LSB's "program is not running", as systemctl).
EXIT_NOT_RUNNING = 3
STATUS_WAIT_SECONDS = 5.0


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from clawd.daemon.app import Daemon
    from clawd.reload import load_in_force

    settings, document = load_in_force(args.config, check_files=True)
    configure_logging(settings.log.level, home=settings.home)
    warn_if_readable_by_others(args.config or default_config_path())
    _warn_retired(settings)
    return asyncio.run(Daemon(settings, document, args.config).run())


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, check_files=True)
    configure_logging("warning")
    warn_if_readable_by_others(args.config or default_config_path())
    _warn_retired(settings)
    print(settings.summary())
    return 0


def _warn_retired(settings: Settings) -> None:
    """An older config.json still starts; say once what it sets in vain."""
    import structlog

    for key in settings.retired_keys():
        structlog.get_logger("clawd.config").warning(
            "config_key_unused",
            key=key,
            fix="remove it: flapping is now detection.flapHighPercent / flapLowPercent",
        )


def cmd_config_push(args: argparse.Namespace) -> int:
    """A validated config.json to every known peer.

    Through the daemon if one runs (it pushes the configuration it runs), else this file,
    validated first (a file clawd would reject is never pushed).
    """
    from clawd.backup.commands import daemon_running
    from clawd.control import request
    from clawd.fleetops.distribution import PushOutcome, render_outcomes
    from clawd.reload import load_in_force

    settings, document = load_in_force(args.config, check_files=True)
    configure_logging("warning")
    if daemon_running(settings):
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
        outcomes = [PushOutcome(**o) for o in answer.get("outcomes", [])]
        retry_note = "the daemon pushes to failed peers again when they come back"
    else:
        outcomes = asyncio.run(_push_directly(settings, document.data))
        retry_note = "run again, or start the daemon to retry when they come back"
    if not outcomes:
        print("no peers known yet (see `clawd status`)")
        return 0
    print(render_outcomes(outcomes))
    if any(o.result == "failed" for o in outcomes):
        print(f"some peers failed: {retry_note}", file=sys.stderr)
        return 1
    if any(o.result == "fenced" for o in outcomes):
        print(
            "some peers follow another leader (a newer leadership epoch): their leader "
            "keeps their config.json; push from it, or through this daemon while it leads",
            file=sys.stderr,
        )
        return 1
    if any(o.result == "skipped" for o in outcomes):
        print(
            "some peers lack claw-clan: nothing was written there; the leading daemon "
            "reinstalls them (with this configuration)",
            file=sys.stderr,
        )
        return 1
    return 0


async def _push_directly(settings: Settings, ours: dict[str, Any]) -> list[Any]:
    from clawd.fleetops.distribution import push_many
    from clawd.fleetops.leadership import addresses
    from clawd.reconciler import initial_view
    from clawd.ssh_client import Connector
    from clawd.store.factory import self_instance
    from clawd.store.json_store import JsonStore

    snap = (await JsonStore(settings.home).load(read_only=True)).snapshot
    view = initial_view(self_instance(settings), snap.instances, snap.peers, snap.leader)
    peers = [p for _, p in sorted(addresses(view, settings.instance.ssh_user).items())]
    return await push_many(Connector(settings.ssh, settings.home), peers, ours, settings)


def _with_pg(
    args: argparse.Namespace, work: Callable[[Settings, Any], Coroutine[Any, Any, int]]
) -> int:
    from clawd.store.pg_store import PgStore

    settings = _settings(args)
    configure_logging("warning")

    async def main() -> int:
        store = await PgStore.open(settings.postgres)
        try:
            return await work(settings, store)
        finally:
            await store.close()

    return asyncio.run(main())


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from clawd.store.migrations import applied_migrations

    async def work(settings: Settings, store: Any) -> int:
        # PgStore.open has migrated; report what is recorded now.
        async with store.pool.acquire() as conn:
            applied = await applied_migrations(conn)
        print(f"database {settings.postgres.target()} is at: {', '.join(sorted(applied))}")
        return 0

    return _with_pg(args, work)


def cmd_db_import_json(args: argparse.Namespace) -> int:
    from clawd.store.importer import import_json
    from clawd.store.json_store import JsonStore

    async def work(settings: Settings, store: Any) -> int:
        report = await import_json(JsonStore(settings.home), store, dry_run=args.dry_run)
        if args.dry_run:
            print(f"dry run: would import into {settings.postgres.target()}")
            print(f"{'table':<16} {'in JSON':>8} {'in PostgreSQL now':>18}")
            for t in report.tables:
                print(f"{t.table:<16} {t.in_json:>8} {t.before:>18}")
            return 0
        print(f"imported into {settings.postgres.target()}")
        print(f"{'table':<16} {'in JSON':>8} {'before':>8} {'after':>8}  check")
        for t in report.tables:
            check = "ok" if t.missing == 0 else f"MISSING {t.missing}"
            print(f"{t.table:<16} {t.in_json:>8} {t.before:>8} {t.after:>8}  {check}")
        if not report.ok:
            print(
                "error: some JSON records are not in PostgreSQL after the import", file=sys.stderr
            )
            return EXIT_USER_ERROR
        return 0

    return _with_pg(args, work)


def cmd_reload(args: argparse.Namespace) -> int:
    """Synchronous reload through the running daemon: fit for systemd's ExecReload=."""
    from clawd.control import request

    settings = _settings(args)
    answer = asyncio.run(request(settings.home, "reload"))
    if not answer.get("ok"):
        print(f"error: config rejected: {answer.get('error')}", file=sys.stderr)
        return EXIT_USER_ERROR
    changed = answer.get("changed") or []
    print(f"reloaded: {', '.join(changed)}" if changed else "reloaded: no change")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The running daemon's live view; when none answers, the store's files, said to be
    old in the first line, and exit 3 (EXIT_NOT_RUNNING)."""
    from clawd.control import NoAnswer, request

    settings = _settings(args)
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
    from clawd.status_view import render_table

    if args.json:
        print(json.dumps({**answer, "live": True, "ageSeconds": 0.0}, indent=2))
        return 0
    print(render_table(answer.get("peers", []), answer.get("leader")))
    print(f"{answer.get('summary')}; postgres {answer.get('postgres')}")
    return 0


def _status_from_files(settings: Settings, error: str, *, as_json: bool) -> int:
    """No daemon: its files are its last view, not the fleet's state now."""
    import time
    from datetime import UTC, datetime

    from clawd.control import socket_path
    from clawd.status_view import files_written_at, not_running_line, peer_rows, render_table
    from clawd.store.json_store import JsonStore

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
    from clawd.backup.commands import daemon_running
    from clawd.control import request
    from clawd.detection.explain import render

    if not daemon_running(settings):
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


def cmd_probe(args: argparse.Namespace) -> int:
    """Reach TARGET's SSH banner from here (asked by a peer's daemon); no config needed."""
    from clawd import probe

    return probe.run(args.target, args.timeout, as_json=args.json)


def cmd_backup_now(args: argparse.Namespace) -> int:
    """Through the running daemon when there is one (one backup at a time), else directly."""
    from clawd.backup import commands
    from clawd.backup.results import BackupResult
    from clawd.control import request

    settings = _settings(args)
    configure_logging("warning")
    if commands.daemon_running(settings):
        b = settings.backup
        answer = asyncio.run(
            request(
                settings.home,
                "backup",
                wait_seconds=b.lock_wait_seconds + 2 * b.timeout_seconds,
                source="clawd backup now",
            )
        )
        if "result" not in answer:
            print(f"error: {answer.get('error')}", file=sys.stderr)
            return 1
        result = BackupResult.from_dict(answer["result"])
    else:
        result = commands.backup_now(settings)
    print(commands.format_backup(result), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def cmd_backup_list(args: argparse.Namespace) -> int:
    import dataclasses

    from clawd.backup import commands

    rows = commands.list_backups(_settings(args))
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        print(commands.format_list(rows))
    return 0


def cmd_backup_verify(args: argparse.Namespace) -> int:
    from clawd.backup import commands

    settings = _settings(args)
    configure_logging("warning")
    result = commands.verify(settings, args.file)
    print(commands.format_verify(result), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def cmd_backup_restore(args: argparse.Namespace) -> int:
    from clawd.backup import commands

    settings = _settings(args)
    configure_logging("warning")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    result = commands.restore(settings, args.file, yes=args.yes, interactive=interactive)
    print(commands.format_restore(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clawd", description="claw-clan fleet daemon")
    parser.add_argument("--version", action="version", version=f"clawd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config.json (default: $CLAW_HOME/config.json or ~/.openclaw/claw-clan/config.json)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", parents=[common], help="run the daemon").set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_command", required=True
    )
    config.add_parser("check", parents=[common], help="validate config.json").set_defaults(
        func=cmd_config_check
    )
    config.add_parser(
        "push",
        parents=[common],
        help="copy the validated config.json (a running daemon's, in force) to every known peer",
    ).set_defaults(func=cmd_config_push)

    db = sub.add_parser("db", help="PostgreSQL").add_subparsers(dest="db_command", required=True)
    db.add_parser("migrate", parents=[common], help="apply schema migrations").set_defaults(
        func=cmd_db_migrate
    )
    imp = db.add_parser(
        "import-json", parents=[common], help="backfill PostgreSQL from the JSON store"
    )
    imp.add_argument("--dry-run", action="store_true", help="print counts, write nothing")
    imp.set_defaults(func=cmd_db_import_json)

    sub.add_parser(
        "reload", parents=[common], help="re-read config.json in the running daemon"
    ).set_defaults(func=cmd_reload)

    backup = sub.add_parser("backup", help="backups").add_subparsers(
        dest="backup_command", required=True
    )
    backup.add_parser(
        "now", parents=[common], help="back up now (through the running daemon if any)"
    ).set_defaults(func=cmd_backup_now)
    blist = backup.add_parser("list", parents=[common], help="backups and their verification")
    blist.add_argument("--json", action="store_true", help="machine-readable output")
    blist.set_defaults(func=cmd_backup_list)
    bverify = backup.add_parser(
        "verify", parents=[common], help="checksum, full read, restore into a scratch database"
    )
    bverify.add_argument("file", nargs="?", help="a backup file (default: the newest backup)")
    bverify.set_defaults(func=cmd_backup_verify)
    brestore = backup.add_parser(
        "restore", parents=[common], help="restore a .dump or _json.tar.gz backup"
    )
    brestore.add_argument("file", help="a file from `clawd backup list`, or a path")
    brestore.add_argument("--yes", action="store_true", help="do not ask (needed without a TTY)")
    brestore.set_defaults(func=cmd_backup_restore)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="the running daemon's live view; else its files, and exit 3",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--live", action="store_true", help="only the live view: exit 3 when no daemon answers"
    )
    status.add_argument(
        "--why", metavar="PEER", help="the evidence about PEER (gateway id or name) and the rule"
    )
    status.set_defaults(func=cmd_status)

    probe = sub.add_parser("probe", help="can this machine reach TARGET's SSH server?")
    probe.add_argument("target", metavar="TARGET", help="host:port, [ipv6]:port or host (port 22)")
    probe.add_argument("--timeout", metavar="SECONDS", help="give up after this long (default 3)")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(func=cmd_probe)

    cli_history.register(sub, common)
    cli_skills.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError as exc:
        return cli_output.output_cut(exc)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ClawdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        code = 130
    cli_output.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
