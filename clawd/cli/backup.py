"""`clawd backup now|list|verify|restore`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from clawd.config.load import load_settings
from clawd.core.logs import configure_logging


def cmd_backup_now(args: argparse.Namespace) -> int:
    """Through the running daemon when there is one (one backup at a time), else directly."""
    from clawd.act.backup import commands
    from clawd.act.backup.results import BackupResult
    from clawd.serve.control import request
    from clawd.serve.daemon_client import daemon_running

    settings = load_settings(args.config)
    configure_logging("warning")
    if daemon_running(settings.home):
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

    from clawd.act.backup import commands

    rows = commands.list_backups(load_settings(args.config))
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        print(commands.format_list(rows))
    return 0


def cmd_backup_verify(args: argparse.Namespace) -> int:
    from clawd.act.backup import commands

    settings = load_settings(args.config)
    configure_logging("warning")
    result = commands.verify(settings, args.file)
    print(commands.format_verify(result), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def cmd_backup_restore(args: argparse.Namespace) -> int:
    from clawd.act.backup import commands

    settings = load_settings(args.config)
    configure_logging("warning")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    result = commands.restore(settings, args.file, yes=args.yes, interactive=interactive)
    print(commands.format_restore(result))
    return 0
