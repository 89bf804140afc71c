"""Schedules and durations: a local time of day ("03:00") or an interval ("6h", "1h30m").

Used by config validation (`backup.schedule`, `skills.syncInterval`, ...), the backup and
skills schedulers and the history time spans, so it depends on nothing of clawd.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

DAY = timedelta(days=1)
_TIME_OF_DAY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_INTERVAL = re.compile(r"^(?:\d+[smhd])+$")
_PART = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


@dataclass(frozen=True, slots=True)
class Schedule:
    """Either `at` (daily, local time) or `every` (an interval), never both."""

    at: time | None = None
    every: timedelta | None = None

    @property
    def interval(self) -> timedelta:
        """The nominal gap between two runs (a day for a time of day)."""
        return self.every if self.every is not None else DAY

    def next_due(self, last: datetime | None, now: datetime) -> datetime:
        """When the next run is due, given the last attempt (aware datetimes).

        A time of day missed while clawd was down runs at once (like anacron), but
        only when there was an earlier backup: a new install waits for its first slot.
        """
        if self.every is not None:
            return now + self.every if last is None else max(now, last + self.every)
        assert self.at is not None
        local_now = now.astimezone()
        slot = datetime.combine(local_now.date(), self.at).astimezone()
        previous = slot if slot <= local_now else _shift_days(slot, -1)
        if last is not None and last < previous:
            return now
        return slot if slot > local_now else _shift_days(slot, 1)

    def describe(self) -> str:
        if self.at is not None:
            return f"daily at {self.at.strftime('%H:%M')}"
        return f"every {format_duration(self.interval.total_seconds())}"


def _shift_days(moment: datetime, days: int) -> datetime:
    # Through naive local wall time, so a DST change keeps the hour of day.
    return datetime.combine(moment.date() + timedelta(days=days), moment.time()).astimezone()


# Bigger intervals overflow timedelta (or datetime, once added to now): refuse them.
_MAX_INTERVAL_SECONDS = 100 * 366 * 86_400


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; ValueError with the accepted forms otherwise."""
    value = text.strip().lower()
    match = _TIME_OF_DAY.match(value)
    if match:
        return Schedule(at=time(int(match.group(1)), int(match.group(2))))
    if _INTERVAL.match(value):
        seconds = sum(int(n) * _UNIT[u] for n, u in _PART.findall(value))
        if 1 <= seconds <= _MAX_INTERVAL_SECONDS:
            return Schedule(every=timedelta(seconds=seconds))
    raise ValueError(
        f'{text!r} is not a schedule: use a time of day like "03:00" '
        'or an interval like "6h", "30m", "1h30m", "1d"'
    )


def parse_interval(text: str) -> timedelta:
    """An interval like "24h", "7d", "1h30m"; ValueError otherwise."""
    schedule = parse_schedule(text)
    if schedule.every is None:
        raise ValueError(f'{text!r} is not an interval: use e.g. "24h", "7d", "1h30m"')
    return schedule.every


def format_duration(seconds: float) -> str:
    """3h, 2d, 45s, 1h30m: short, for status lines and tables."""
    s = round(seconds)
    if s < 60:
        return f"{max(s, 0)}s"
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2:
            break
    return "".join(parts)
