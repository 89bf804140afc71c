"""`clawd notify test`: a test message to every receiver, and what each said."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from clawd.cli.codes import EXIT_USER_ERROR
from clawd.config.load import load_settings
from clawd.core.model import new_key, utcnow
from clawd.serve.alerts.message import Message
from clawd.serve.alerts.receivers import DeliveryError, Receiver
from clawd.serve.alerts.service import build_receivers


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the notify commands to the `clawd` parser."""
    notify = sub.add_parser("notify", help="notifications").add_subparsers(
        dest="notify_command", required=True
    )
    test = notify.add_parser(
        "test", parents=[common], help="send a test message to every receiver (notify.apprise)"
    )
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.set_defaults(func=cmd_notify_test)


async def _send(receiver: Receiver, message: Message) -> str | None:
    try:
        await receiver.send(message)
    except DeliveryError as exc:
        return str(exc)
    return None


def cmd_notify_test(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    receivers = build_receivers(settings)
    if not receivers:
        what = "none that can be used" if settings.notify.enabled else "none"
        print(
            f"error: no receivers in notify.apprise or notify.alertmanager ({what})",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    now = utcnow()
    message = Message(
        key=f"test-{new_key()}",
        event="test",
        title="clawd: test notification",
        body=f"From {settings.instance.name or settings.instance.gateway_id} at "
        f"{now.isoformat(timespec='seconds')}: notifications reach you.",
        at=now,
    )

    async def send_all() -> list[str | None]:
        return list(await asyncio.gather(*(_send(r, message) for r in receivers)))

    errors = asyncio.run(send_all())
    if args.json:
        rows = [
            {"receiver": r.name, "ok": e is None, "error": e}
            for r, e in zip(receivers, errors, strict=True)
        ]
        print(json.dumps({"receivers": rows}, indent=2))
    else:
        width = max(len(r.name) for r in receivers)
        for receiver, error in zip(receivers, errors, strict=True):
            print(f"{receiver.name:<{width}}  {'ok' if error is None else error}")
    return 1 if any(e is not None for e in errors) else 0
