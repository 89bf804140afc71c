"""clawd.keep.history without a database: windows, availability arithmetic, safe rendering."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from clawd.core.errors import HistoryError
from clawd.core.text import escape_unprintable
from clawd.keep.history.collect import floor_from_sample, split
from clawd.keep.history.render import report_csv, report_table, summarise
from clawd.keep.history.report import PeerReport, PeerStats, Report, capped_sum, peer_report
from clawd.keep.history.timespec import resolve_window

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def test_since_counts_back_from_now() -> None:
    w = resolve_window("30m", None, None, default_since="24h", now=NOW)
    assert (w.start, w.end) == (NOW - timedelta(minutes=30), NOW)
    w = resolve_window(None, None, None, default_since="7d", now=NOW)
    assert w.start == NOW - timedelta(days=7)


def test_from_to_accepts_offsets_and_z() -> None:
    w = resolve_window(None, "2024-05-01T02:00:00+02:00", "2024-05-01T01:00Z", default_since="1d")
    assert w.start == datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
    assert w.end == datetime(2024, 5, 1, 1, 0, tzinfo=UTC)
    w = resolve_window(None, "2024-05-01", None, default_since="1d", now=NOW)
    assert w.end == NOW and w.start.tzinfo is not None


@pytest.mark.parametrize(
    ("since", "start", "end", "message"),
    [
        ("yesterday", None, None, "--since 'yesterday' is not a duration"),
        ("24h", "2024-05-01", None, "either --since or --from/--to"),
        (None, None, "2024-05-01", "--to needs --from"),
        (None, "May 1st", None, "--from 'May 1st' is not an ISO-8601 timestamp"),
        (None, "2024-05-02", "2024-05-01", "must be later than --from"),
    ],
)
def test_bad_windows_are_clear_errors(
    since: str | None, start: str | None, end: str | None, message: str
) -> None:
    with pytest.raises(HistoryError, match=message.replace("(", r"\(")):
        resolve_window(since, start, end, default_since="24h", now=NOW)


def test_capped_sum_caps_only_long_spans() -> None:
    # spans 10, 10, 450, 3080 with cap 30: 10 + 10 + 30 + 30
    assert capped_sum(3550.0, [450.0, 3080.0], 30.0) == 80.0
    assert capped_sum(3550.0, [], 30.0) == 3550.0


def _stats(**kw: object) -> PeerStats:
    base: dict[str, object] = {
        "gateway_id": "gw-a",
        "pings": 4,
        "successes": 3,
        "median_gap_s": 10.0,
        "up_s": 120.0,
        "observed_s": 130.0,
        "long_up": (100.0,),
        "long_down": (),
        "floor_s": 15.0,
        "p50_ms": 5,
        "p95_ms": 9,
        "max_ms": 9,
    }
    base.update(kw)
    return PeerStats(**base)  # type: ignore[arg-type]


def test_peer_report_availability() -> None:
    # up spans 10 + 10 + 100 (capped to 30), down span 10: 50 / 60
    r = peer_report(_stats(), "gw-a", "alpha", {"offline": 1})
    assert r.availability_pct == pytest.approx(100 * 50 / 60)
    assert r.observed_s == pytest.approx(60.0)
    assert r.success_pct == pytest.approx(75.0)


def test_peer_report_refuses_inexact_input_and_handles_no_gaps() -> None:
    with pytest.raises(ValueError, match="not all fetched"):
        peer_report(_stats(floor_s=31.0), "gw-a", None, {})
    single = peer_report(_stats(pings=1, median_gap_s=None, floor_s=99.0), "gw-a", None, {})
    assert single.availability_pct is None and single.observed_s == 0.0
    empty = peer_report(None, "gw-z", None, {"online": 2})
    assert empty.pings == 0 and empty.success_pct is None and empty.incidents == {"online": 2}


def test_floor_and_split() -> None:
    assert floor_from_sample([10.0, None, 100.0]) == 15.0
    assert floor_from_sample([None]) == 0.0
    assert split(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert split(["a"], 2) == [["a"]]
    assert split([], 2) == []


def test_clean_escapes_control_and_bidi_characters() -> None:
    assert escape_unprintable("plain näme") == "plain näme"
    assert escape_unprintable("evil\x1b[31m\nline\r\u202e") == "evil\\x1b[31m\\nline\\r\\u202e"


def test_summarise_is_one_line() -> None:
    assert summarise({"downtime": 20, "who": {"old": "a"}}) == 'downtime=20 who={"old":"a"}'
    assert summarise(None) == "-"
    assert summarise(["x", 1]) == '["x",1]'


def test_a_fleet_incident_names_its_witnesses_first() -> None:
    details = {
        "name": "m5",
        "witnesses": [
            {"observer": "m2", "first_seen": "2026-12-01T12:00:06+00:00"},
            {"observer": "m1", "first_seen": "2026-12-01T12:00:07+00:00"},
        ],
        "quorum": 2,
    }
    assert summarise(details) == "witnesses=m2,m1 name=m5 quorum=2"
    # Anything else under that key is shown as it is.
    assert summarise({"witnesses": [1]}) == "witnesses=[1]"


def _hostile_report() -> Report:
    peer = PeerReport(
        "gw-\x1b[2J", "evil\nname\x07", 3, 2, 66.7, 50.0, 60.0, 30.0, 10.0, 5, 9, 9, {"offline": 1}
    )
    return Report(NOW, NOW, NOW, [peer])


def test_table_and_csv_keep_hostile_names_on_one_inert_line() -> None:
    table = report_table(_hostile_report(), "report")
    assert "\x1b" not in table and "\x07" not in table
    assert len(table.splitlines()) == 3
    text = report_csv(_hostile_report())
    assert "\x1b" not in text and "\x07" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["name"] == "evil\\nname\\x07"
    assert rows[0]["incidents"] == "offline=1"
