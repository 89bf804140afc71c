"""config.json's `notify` section: who is told of the fleet's events, and of which."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from clawd.config.sections import Section
from clawd.core.model import EventType

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
_HTTP_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
# What a person wants to hear of by default: a machine down or back, many at once, one
# that cannot make up its mind, one that only this machine cannot reach. Not `online`
# (every start says it of every peer), not leader changes (clawd handles them).
DEFAULT_EVENTS = (
    EventType.OFFLINE,
    EventType.RECOVERY,
    EventType.PARTITION,
    EventType.PARTITION_END,
    EventType.FLAP_START,
    EventType.FLAP_STOP,
    EventType.UNREACHABLE,
)


class NotifySettings(Section):
    # Apprise URLs (https://github.com/caronc/apprise/wiki: mailto://, slack://, tgram://,
    # ntfy://, json://host/path …). They carry tokens and passwords: never shown or logged.
    apprise: list[SecretStr] = Field(default_factory=list, max_length=50)
    # Alertmanager base URLs (http://host:9093): clawd posts alerts to /api/v2/alerts and
    # keeps the firing ones fresh; routing, grouping, inhibition and escalation are theirs.
    alertmanager: list[SecretStr] = Field(default_factory=list, max_length=20)
    # The `fleet` label of every alert (several fleets may share one Alertmanager).
    fleet: str = Field(default="claw-clan", min_length=1, max_length=100)
    events: list[EventType] = Field(default_factory=lambda: list(DEFAULT_EVENTS))
    # This machine's own backups: a failure told once (until one works again), and then
    # that they work again.
    backups: bool = True
    # Per receiver; a burst beyond it is sent as one digest.
    rate_per_minute: int = Field(default=20, ge=1, le=10_000)
    retry_max_seconds: float = Field(default=300.0, ge=1, le=86_400)

    @field_validator("apprise")
    @classmethod
    def _urls(cls, value: list[SecretStr]) -> list[SecretStr]:
        for n, url in enumerate(value):
            if not _URL.match(url.get_secret_value()):
                raise ValueError(f"[{n}] is not an Apprise URL (scheme://…)")
        return value

    @field_validator("alertmanager")
    @classmethod
    def _http_urls(cls, value: list[SecretStr]) -> list[SecretStr]:
        for n, url in enumerate(value):
            if not _HTTP_URL.match(url.get_secret_value()):
                raise ValueError(f"[{n}] is not an Alertmanager URL (http://host:9093)")
        return value

    def urls(self) -> list[str]:
        return [url.get_secret_value() for url in self.apprise]

    def alertmanager_urls(self) -> list[str]:
        return [url.get_secret_value() for url in self.alertmanager]

    @property
    def enabled(self) -> bool:
        """Is anybody to be told?"""
        return bool(self.apprise or self.alertmanager)
