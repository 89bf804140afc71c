"""`backup.schedule`: parsing, when the next run is due, and the settings that carry it."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from clawd.config.load import settings_from_data
from clawd.core.errors import ConfigError
from clawd.core.schedule import Schedule, format_duration, parse_schedule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("03:00", Schedule(at=time(3, 0))),
        ("3:05", Schedule(at=time(3, 5))),
        ("23:59", Schedule(at=time(23, 59))),
        ("6h", Schedule(every=timedelta(hours=6))),
        ("30m", Schedule(every=timedelta(minutes=30))),
        ("1h30m", Schedule(every=timedelta(minutes=90))),
        ("1d", Schedule(every=timedelta(days=1))),
        ("45s", Schedule(every=timedelta(seconds=45))),
    ],
)
def test_parse(text: str, expected: Schedule) -> None:
    assert parse_schedule(text) == expected


@pytest.mark.parametrize("text", ["", "24:00", "3", "3:7", "0s", "6 hours", "-1h", "daily"])
def test_parse_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match='time of day like "03:00" or an interval like "6h"'):
        parse_schedule(text)


def test_interval_counts_from_the_last_attempt() -> None:
    s = parse_schedule("6h")
    now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    assert s.next_due(None, now) == now + timedelta(hours=6)
    assert s.next_due(now - timedelta(hours=1), now) == now + timedelta(hours=5)
    assert s.next_due(now - timedelta(hours=7), now) == now  # overdue: at once
    assert s.interval == timedelta(hours=6)


def test_time_of_day_is_local_and_catches_up_a_missed_slot() -> None:
    s = parse_schedule("03:00")
    local = datetime(2026, 1, 10, 12, 0).astimezone()  # noon, local time
    now = local.astimezone(UTC)
    tomorrow_3 = datetime(2026, 1, 11, 3, 0).astimezone()
    today_3 = datetime(2026, 1, 10, 3, 0).astimezone()
    # Backed up at today's slot: next is tomorrow's.
    assert s.next_due(today_3 + timedelta(seconds=5), now) == tomorrow_3
    # A new install waits for its first slot.
    assert s.next_due(None, now) == tomorrow_3
    # Down at 03:00 today (last backup yesterday): run now.
    assert s.next_due(today_3 - timedelta(hours=20), now) == now
    # Before the slot: today's.
    early = datetime(2026, 1, 10, 2, 0).astimezone()
    assert s.next_due(early - timedelta(hours=23), early) == today_3
    assert s.interval == timedelta(days=1)
    assert s.describe() == "daily at 03:00"


def test_format_duration() -> None:
    assert [format_duration(x) for x in (0, 59, 60, 3600 * 3, 86_400 * 2 + 3600 * 12 + 60)] == [
        "0s",
        "59s",
        "1m",
        "3h",
        "2d12h",
    ]


def test_settings_validate_schedule_and_verify_restore() -> None:
    s = settings_from_data({"backup": {"schedule": "6h", "verifyRestore": "04:30"}}, environ={})
    assert (s.backup.schedule, s.backup.verify_restore, s.backup.compress) == (
        "6h",
        "04:30",
        "auto",
    )
    with pytest.raises(ConfigError, match=r"backup\.schedule") as bad:
        settings_from_data({"backup": {"schedule": "sometimes"}}, environ={})
    assert '"03:00"' in str(bad.value)
    with pytest.raises(ConfigError, match=r"verifyRestore|verify_restore"):
        settings_from_data({"backup": {"verifyRestore": "weekly"}}, environ={})
    with pytest.raises(ConfigError, match="compress"):
        settings_from_data({"backup": {"compress": "lz4"}}, environ={})
