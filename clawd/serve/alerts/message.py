"""One notification as the outbox keeps it, and the digest that stands for many."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DIGEST_EVENT = "digest"
DIGEST_TITLES_SHOWN = 3  # first and last few titles; the counts say the rest


@dataclass(frozen=True)
class Message:
    """A notification; `key` is unique (the outbox never holds two with one key)."""

    key: str
    event: str  # "offline", "recovery", "partition", "test", "digest", ...
    title: str
    body: str
    at: datetime  # aware, UTC
    gateway: str | None = None

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("Message.at must be timezone-aware")

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "event": self.event,
            "title": self.title,
            "body": self.body,
            "at": self.at.astimezone(UTC).isoformat(),
            "gateway": self.gateway,
        }

    @classmethod
    def from_json(cls, data: Any) -> Message:
        """The message `to_json` wrote; ValueError naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError("a message must be a JSON object")
        fields: dict[str, str] = {}
        for name in ("key", "event", "title", "body", "at"):
            value = data.get(name)
            if not isinstance(value, str) or (name in ("key", "event") and not value):
                raise ValueError(f"message field {name!r} must be a non-empty string")
            fields[name] = value
        gateway = data.get("gateway")
        if gateway is not None and not isinstance(gateway, str):
            raise ValueError("message field 'gateway' must be a string or null")
        try:
            at = datetime.fromisoformat(fields["at"])
        except ValueError:
            raise ValueError("message field 'at' must be an ISO 8601 time") from None
        if at.tzinfo is None:
            raise ValueError("message field 'at' must carry a UTC offset")
        return cls(
            key=fields["key"],
            event=fields["event"],
            title=fields["title"],
            body=fields["body"],
            at=at.astimezone(UTC),
            gateway=gateway,
        )


def digest_of(messages: Sequence[Message]) -> Message:
    """One message standing for `messages` (a burst over a receiver's rate limit)."""
    if not messages:
        raise ValueError("a digest needs at least one message")
    counts = Counter(m.event for m in messages)
    lines = [", ".join(f"{event}: {n}" for event, n in counts.most_common())]
    shown = DIGEST_TITLES_SHOWN
    if len(messages) <= 2 * shown:
        lines += [f"- {m.title}" for m in messages]
    else:
        lines += [f"- {m.title}" for m in messages[:shown]]
        lines.append(f"- ... {len(messages) - 2 * shown} more ...")
        lines += [f"- {m.title}" for m in messages[-shown:]]
    first, last = messages[0], messages[-1]
    return Message(
        # Not kept in the outbox; the key only has to name the burst for the logs.
        key=f"digest:{first.key}..{last.key}",
        event=DIGEST_EVENT,
        title=f"clawd: {len(messages)} more events",
        body="\n".join(lines),
        at=last.at,
    )
