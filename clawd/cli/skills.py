"""`clawd skills sync|audit`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from clawd.act.skills.results import SyncResult
from clawd.config.load import load_settings
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging

CONTROL_COMMAND = "skills-sync"
AUDIT_COLUMNS = ("TIME", "GATEWAY", "SKILL", "ACTION", "SOURCE")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the skills commands to the `clawd` parser."""
    skills = sub.add_parser("skills", help="shared skills").add_subparsers(
        dest="skills_command", required=True
    )
    skills.add_parser(
        "sync", parents=[common], help="sync skills now (through the running daemon if any)"
    ).set_defaults(func=cmd_skills_sync)
    audit = skills.add_parser("audit", parents=[common], help="skill installs, updates, removals")
    audit.add_argument(
        "--since", default="7d", help='how far back, an interval like "7d" or "12h" (default 7d)'
    )
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(func=cmd_skills_audit)


# -- sync ---------------------------------------------------------------------


def cmd_skills_sync(args: argparse.Namespace) -> int:
    """Through the running daemon when there is one, else directly; exit 1 when it failed."""
    from clawd.serve.daemon_client import daemon_running

    settings = load_settings(args.config)
    configure_logging("warning")
    if daemon_running(settings.home):
        result = asyncio.run(_through_daemon(settings))
    else:
        result = asyncio.run(sync_directly(settings))
    if not result.ok:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    print(format_sync(result))
    return 0


async def _through_daemon(settings: Settings) -> SyncResult:
    from clawd.act.skills.sync import lock_wait_seconds
    from clawd.serve.control import request

    wait = lock_wait_seconds(settings) + 2 * settings.skills.git_timeout_seconds
    answer = await request(
        settings.home, CONTROL_COMMAND, wait_seconds=wait, source="clawd skills sync"
    )
    if "result" in answer:
        return SyncResult.from_dict(answer["result"])
    error = str(answer.get("error"))
    if error == "unknown or malformed request":
        error = "the running clawd does not know `skills-sync`; restart it with this version"
    return SyncResult(ok=False, error=error)


async def sync_directly(settings: Settings) -> SyncResult:
    """One sync in this process; its audit rows and incident reach every store before return."""
    from clawd.act.skills.sync import attempt
    from clawd.keep.incidents import IncidentRecorder
    from clawd.keep.store.factory import build_repository

    repo = build_repository(settings)
    await repo.open()
    try:
        async with asyncio.TaskGroup() as tg:
            # With backend=postgres this delivers to PostgreSQL (or the spool, when it is down).
            tg.create_task(repo.run(asyncio.Event()), name="clawd-skills-delivery")
            try:
                result = await attempt(settings, repo, IncidentRecorder(repo))
                await repo.flush()
            finally:
                repo.stop()
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None  # the CLI reports one error, not a group
    finally:
        await repo.close()
    return result


def format_sync(result: SyncResult) -> str:
    at = f"{result.source}@{(result.commit or '')[:12]}"
    if not result.changed:
        return f"skills up to date with {at} ({result.duration_seconds:.1f} s)"
    rows = result.actions()
    width = max(len("SKILL"), *(len(name) for name, _ in rows))
    lines = [f"{'SKILL':<{width}}  ACTION"]
    lines += [f"{name:<{width}}  {action.value}" for name, action in rows]
    lines.append(
        f"synced {at}: {len(result.installed)} installed, {len(result.updated)} updated, "
        f"{len(result.removed)} removed ({result.duration_seconds:.1f} s)"
    )
    return "\n".join(lines)


# -- audit --------------------------------------------------------------------


def cmd_skills_audit(args: argparse.Namespace) -> int:
    """skill_audit rows since --since: PostgreSQL with backend=postgres, else the JSON store."""
    from clawd.act.skills.audit import read_audit, since_time

    settings = load_settings(args.config)
    configure_logging("warning")
    since = since_time(args.since)
    rows = asyncio.run(read_audit(settings, since))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_audit(rows, since))
    return 0


def format_audit(rows: list[dict[str, Any]], since: datetime) -> str:
    if not rows:
        return f"no skill changes since {since.isoformat(timespec='seconds')}"
    table = [AUDIT_COLUMNS] + [
        (
            str(r["timestamp"])[:19].replace("T", " "),
            str(r["gateway_id"]),
            str(r["skill_name"]),
            str(r["action"]),
            str(r["source"] or ""),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(AUDIT_COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    )
