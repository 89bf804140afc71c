"""`--since 24h` or `--from T --to T` -> a half-open UTC window [start, end)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from clawd.core.errors import HistoryError
from clawd.core.schedule import parse_interval


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open time window [start, end) in aware datetimes."""

    start: datetime
    end: datetime

    def describe(self) -> str:
        """`2024-05-01 10:00:00+00:00 → 2024-05-02 10:00:00+00:00`, for headings."""
        return f"{self.start.isoformat(sep=' ')} → {self.end.isoformat(sep=' ')}"


def parse_timestamp(text: str, option: str) -> datetime:
    """An ISO-8601 timestamp; one without an offset is taken as local time."""
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise HistoryError(
            f"{option} {text!r} is not an ISO-8601 timestamp: "
            'use e.g. "2024-05-01", "2024-05-01T14:30" or "2024-05-01T14:30:00+02:00"'
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def resolve_window(
    since: str | None,
    start: str | None,
    end: str | None,
    *,
    default_since: str,
    now: datetime | None = None,
) -> Window:
    """The window the options name; HistoryError for a bad or contradictory combination."""
    moment = now or datetime.now(UTC)
    if since is not None and (start is not None or end is not None):
        raise HistoryError("use either --since or --from/--to, not both")
    if start is None and end is not None:
        raise HistoryError("--to needs --from")
    if start is not None:
        begin = parse_timestamp(start, "--from")
        finish = parse_timestamp(end, "--to") if end is not None else moment
        if finish <= begin:
            raise HistoryError(
                f"--to ({finish.isoformat()}) must be later than --from ({begin.isoformat()})"
            )
        return Window(begin.astimezone(UTC), finish.astimezone(UTC))
    text = since if since is not None else default_since
    try:
        length = parse_interval(text)
    except ValueError:
        raise HistoryError(
            f'--since {text!r} is not a duration: use e.g. "30m", "24h", "7d", "1h30m"'
        ) from None
    return Window(moment - length, moment)
