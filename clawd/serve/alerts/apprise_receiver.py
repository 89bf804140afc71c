"""Apprise receivers: one Apprise URL each (the `apprise` library, 100+ services).

Its own module: importing apprise loads every plugin it has (a fraction of a second of
CPU), so a daemon without Apprise URLs never pays for it (alerts/service.py imports this
lazily, off the event loop).
"""

from __future__ import annotations

import asyncio
import logging
import warnings

import apprise

from clawd.serve.alerts.message import Message
from clawd.serve.alerts.receivers import (
    SEND_TIMEOUT,
    DeliveryError,
    _redacted,
    receiver_id,
    scrub,
)

_NOTIFY_TYPES = {
    "offline": apprise.NotifyType.FAILURE,
    "partition": apprise.NotifyType.WARNING,
    "recovery": apprise.NotifyType.SUCCESS,
}
# apprise 2 returns a result holding this call's own log lines; apprise 1 only a bool,
# so its lines are taken from its logger while the call runs.
_PER_CALL_LOGS = hasattr(apprise, "AppriseResult")
# With apprise 1 a captured line may come from a concurrent send to another receiver, so
# its reasons are scrubbed of every receiver's hidden parts.
_EVERY_HIDDEN: set[str] = set()


def _load_apprise_plugins() -> None:
    # apprise imports its plugin modules at the first URL it parses; done at import time,
    # so that parsing a URL on the event loop (a receiver's construction) does not block.
    # Its e-mail plugin imports the stdlib's deprecated imghdr (Python 3.11, 3.12): that
    # warning is apprise's to fix, not clawd's users'.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
        # Parsing one URL has apprise import every plugin: it looks schemes up in them all.
        apprise.Apprise.instantiate("json://localhost")


def _keep_apprise_quiet() -> None:
    # apprise logs through the stdlib, which clawd leaves unconfigured: its warnings would
    # reach stderr through logging's last-resort handler, raw, next to clawd's log lines.
    # clawd reports a failed delivery itself, in one line, scrubbed.
    logger = logging.getLogger("apprise")  # its name in apprise 1 and 2
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


_keep_apprise_quiet()
_load_apprise_plugins()


class AppriseReceiver:
    """One Apprise URL; `send` is bounded by `timeout` seconds.

    Made on the event loop without blocking it: the URL is parsed here (ValueError, with
    the URL redacted, if apprise cannot use it); the Apprise object, whose construction
    reads locale files, is built off the loop at the first send.
    """

    def __init__(self, url: str, *, timeout: float = SEND_TIMEOUT) -> None:
        self.name, self._hidden = _redacted(url)
        self.id = receiver_id(url)
        self.timeout = timeout
        url = url.strip()
        try:
            # Apprise.add() would split a string at spaces: one entry must be one receiver.
            plugin = None if any(c.isspace() for c in url) else apprise.Apprise.instantiate(url)
        except Exception:
            plugin = None
        if plugin is None:
            raise ValueError(f"not an Apprise URL apprise can use: {self.name}")
        self._plugin = plugin
        self._apprise: apprise.Apprise | None = None
        if not _PER_CALL_LOGS:
            _EVERY_HIDDEN.update(self._hidden)

    def _build(self) -> apprise.Apprise:
        built = apprise.Apprise()
        built.add(self._plugin)
        return built

    async def send(self, message: Message) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                delivered, logged = await self._notify(message)
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout:g} s") from None
        except Exception as exc:
            # apprise reports failures by its result; this is a bug of its own. Only the
            # type is shown: its text may hold the URL.
            raise DeliveryError(f"apprise failed: {type(exc).__name__}") from None
        if not delivered:
            reason = "; ".join(line for line in logged if line.strip())
            hidden = self._hidden if _PER_CALL_LOGS else [*self._hidden, *_EVERY_HIDDEN]
            raise DeliveryError(scrub(reason, hidden) or "apprise gave no reason")

    async def _notify(self, message: Message) -> tuple[bool, list[str]]:
        if self._apprise is None:
            self._apprise = await asyncio.to_thread(self._build)
        kind = _NOTIFY_TYPES.get(message.event, apprise.NotifyType.INFO)
        if _PER_CALL_LOGS:
            result = await self._apprise.async_notify(
                body=message.body, title=message.title, notify_type=kind
            )
            return bool(result), [entry.message for entry in result.logs()]
        # apprise 1: the logger is shared (see _EVERY_HIDDEN).
        capture = apprise.LogCapture(level=logging.WARNING, fmt="%(message)s")  # type: ignore[no-untyped-call]
        with capture as captured:
            delivered = await self._apprise.async_notify(
                body=message.body, title=message.title, notify_type=kind
            )
        return bool(delivered), str(captured.getvalue()).splitlines()
