"""`clawd` command line. User errors print `error: …` and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from clawd import __version__
from clawd.cli import backup as cli_backup
from clawd.cli import config as cli_config
from clawd.cli import history as cli_history
from clawd.cli import notify as cli_notify
from clawd.cli import output as cli_output
from clawd.cli import peer as cli_peer
from clawd.cli import silence as cli_silence
from clawd.cli import skills as cli_skills
from clawd.cli import status as cli_status
from clawd.cli.codes import EXIT_USER_ERROR
from clawd.config.load import load_settings
from clawd.config.permissions import warn_if_readable_by_others
from clawd.config.settings import Settings, default_config_path
from clawd.core.errors import ClawdError
from clawd.core.logs import configure_logging


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from clawd.config.reload import load_in_force
    from clawd.daemon.app import Daemon

    settings, document = load_in_force(args.config, check_files=True)
    configure_logging(settings.log.level, home=settings.home)
    warn_if_readable_by_others(args.config or default_config_path())
    cli_config.warn_retired(settings)
    return asyncio.run(Daemon(settings, document, args.config).run())


def _with_pg(
    args: argparse.Namespace, work: Callable[[Settings, Any], Coroutine[Any, Any, int]]
) -> int:
    from clawd.keep.store.pg_store import PgStore

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
    from clawd.keep.store.migrations import applied_migrations

    async def work(settings: Settings, store: Any) -> int:
        # PgStore.open has migrated; report what is recorded now.
        async with store.pool.acquire() as conn:
            applied = await applied_migrations(conn)
        print(f"database {settings.postgres.target()} is at: {', '.join(sorted(applied))}")
        return 0

    return _with_pg(args, work)


def cmd_db_import_json(args: argparse.Namespace) -> int:
    from clawd.config.settings import self_instance
    from clawd.keep.store.importer import import_json
    from clawd.keep.store.json_store import JsonStore

    async def work(settings: Settings, store: Any) -> int:
        me = self_instance(settings).gateway_id
        report = await import_json(
            JsonStore(settings.home), store, dry_run=args.dry_run, observer=me
        )
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
        merged = sum(t.evidence_only for t in report.tables)
        if merged:
            print(
                f"{merged} incident{'s' if merged != 1 else ''} of an event the shared"
                " database had already recorded: kept as evidence (observer_evidence)"
            )
        if not report.ok:
            print(
                "error: some JSON records are not in PostgreSQL after the import", file=sys.stderr
            )
            return EXIT_USER_ERROR
        return 0

    return _with_pg(args, work)


def cmd_probe(args: argparse.Namespace) -> int:
    """Reach TARGET's SSH banner from here (asked by a peer's daemon); no config needed."""
    from clawd.sources import probe

    return probe.run(args.target, args.timeout, as_json=args.json)


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
        func=cli_config.cmd_config_check
    )
    config.add_parser(
        "push",
        parents=[common],
        help="copy the validated config.json (a running daemon's, in force) to every known peer",
    ).set_defaults(func=cli_config.cmd_config_push)

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
    ).set_defaults(func=cli_config.cmd_reload)

    backup = sub.add_parser("backup", help="backups").add_subparsers(
        dest="backup_command", required=True
    )
    backup.add_parser(
        "now", parents=[common], help="back up now (through the running daemon if any)"
    ).set_defaults(func=cli_backup.cmd_backup_now)
    blist = backup.add_parser("list", parents=[common], help="backups and their verification")
    blist.add_argument("--json", action="store_true", help="machine-readable output")
    blist.set_defaults(func=cli_backup.cmd_backup_list)
    bverify = backup.add_parser(
        "verify", parents=[common], help="checksum, full read, restore into a scratch database"
    )
    bverify.add_argument("file", nargs="?", help="a backup file (default: the newest backup)")
    bverify.set_defaults(func=cli_backup.cmd_backup_verify)
    brestore = backup.add_parser(
        "restore", parents=[common], help="restore a .dump or _json.tar.gz backup"
    )
    brestore.add_argument("file", help="a file from `clawd backup list`, or a path")
    brestore.add_argument("--yes", action="store_true", help="do not ask (needed without a TTY)")
    brestore.set_defaults(func=cli_backup.cmd_backup_restore)

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
    status.set_defaults(func=cli_status.cmd_status)

    probe = sub.add_parser("probe", help="can this machine reach TARGET's SSH server?")
    probe.add_argument("target", metavar="TARGET", help="host:port, [ipv6]:port or host (port 22)")
    probe.add_argument("--timeout", metavar="SECONDS", help="give up after this long (default 3)")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(func=cmd_probe)

    cli_history.register(sub, common)
    cli_skills.register(sub, common)
    cli_notify.register(sub, common)
    cli_silence.register(sub, common)
    cli_peer.register(sub, common)
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
