"""Tables, JSON and CSV for `clawd incidents` and `clawd report`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from clawd.core.text import escape_unprintable
from clawd.keep.history.collect import IncidentRow
from clawd.keep.history.report import PeerReport, Report

DETAILS_WIDTH = 100


def local_time(moment: datetime) -> str:
    """`2024-05-01 16:30:05 +0200`: local time with its UTC offset."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def summarise(details: Any) -> str:
    """An incident's details on one line: `key=value …` for an object, else compact JSON."""
    if details is None:
        return "-"
    if isinstance(details, dict):
        # A fleet incident's witnesses first, by name: who saw it matters more than the
        # rest, which the column may cut.
        witnesses = _witness_names(details.get("witnesses"))
        parts = [f"witnesses={witnesses}"] if witnesses is not None else []
        parts += [
            f"{k}={_compact(v)}"
            for k, v in details.items()
            if not (k == "witnesses" and witnesses is not None)
        ]
        return " ".join(parts)
    return _compact(details)


def _witness_names(value: Any) -> str | None:
    """`m1,m2,m3` of a fleet incident's witnesses; None when it is not such a list."""
    if not isinstance(value, list) or not value:
        return None
    names = [w.get("observer") if isinstance(w, dict) else None for w in value]
    if not all(isinstance(n, str) for n in names):
        return None
    return ",".join(str(n) for n in names)


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    cells = [[escape_unprintable(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    last = len(header) - 1

    def line(values: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(values):
            if i in right:
                out.append(v.rjust(widths[i]))
            else:
                out.append(v if i == last else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(r) for r in cells)])


# ----------------------------------------------------------------- incidents


def incidents_table(rows: Sequence[IncidentRow], heading: str) -> str:
    """A timeline, oldest first, one incident per line."""
    if not rows:
        return f"{heading}\nno incidents"
    body = [
        [
            local_time(r.timestamp),
            r.gateway_id,
            r.name if r.name is not None else "-",
            r.event_type,
            _fit(escape_unprintable(summarise(r.details)), DETAILS_WIDTH),
        ]
        for r in rows
    ]
    return heading + "\n" + _table(("TIME", "GATEWAY", "NAME", "EVENT", "DETAILS"), body, set())


def incidents_json(rows: Sequence[IncidentRow]) -> str:
    """A JSON list, oldest first; timestamps in ISO-8601 UTC."""
    return json.dumps(
        [
            {
                "id": r.id,
                "timestamp": r.timestamp.isoformat(),
                "gatewayId": r.gateway_id,
                "name": r.name,
                "eventType": r.event_type,
                "details": r.details,
            }
            for r in rows
        ],
        indent=2,
    )


# ----------------------------------------------------------------- report

CSV_FIELDS = (
    "gatewayId",
    "name",
    "pings",
    "successPct",
    "availabilityPct",
    "observedSeconds",
    "upSeconds",
    "medianGapSeconds",
    "responseP50Ms",
    "responseP95Ms",
    "responseMaxMs",
    "incidents",
)


def _peer_dict(p: PeerReport) -> dict[str, Any]:
    return {
        "gatewayId": p.gateway_id,
        "name": p.name,
        "pings": p.pings,
        "successes": p.successes,
        "successPct": _round(p.success_pct, 3),
        "availabilityPct": _round(p.availability_pct, 3),
        "observedSeconds": _round(p.observed_s, 3),
        "upSeconds": _round(p.up_s, 3),
        "medianGapSeconds": _round(p.median_gap_s, 3),
        "responseP50Ms": p.p50_ms,
        "responseP95Ms": p.p95_ms,
        "responseMaxMs": p.max_ms,
        "incidents": dict(sorted(p.incidents.items())),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def report_json(report: Report) -> str:
    """The report as JSON: the window and one object per peer."""
    return json.dumps(
        {
            "from": report.start.isoformat(),
            "to": report.end.isoformat(),
            "until": report.until.isoformat(),
            "peers": [_peer_dict(p) for p in report.peers],
        },
        indent=2,
    )


def report_csv(report: Report) -> str:
    """One CSV row per peer; incidents as `type=n;type=n`; text cells escaped like tables."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for p in report.peers:
        d = _peer_dict(p)
        d["incidents"] = ";".join(f"{k}={n}" for k, n in d["incidents"].items())
        writer.writerow(["" if d[f] is None else escape_unprintable(str(d[f])) for f in CSV_FIELDS])
    return out.getvalue().rstrip("\n")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ms(value: int | None) -> str:
    return "-" if value is None else str(value)


def report_table(report: Report, heading: str) -> str:
    """One line per peer."""
    if not report.peers:
        return f"{heading}\nno pings or incidents in this window"
    body = [
        [
            p.name if p.name is not None else "-",
            p.gateway_id,
            str(p.pings),
            _pct(p.success_pct),
            _pct(p.availability_pct),
            _ms(p.p50_ms),
            _ms(p.p95_ms),
            _ms(p.max_ms),
            " ".join(f"{k}={n}" for k, n in sorted(p.incidents.items())) or "-",
        ]
        for p in report.peers
    ]
    header = ("NAME", "GATEWAY", "PINGS", "OK%", "AVAIL%", "P50MS", "P95MS", "MAXMS", "INCIDENTS")
    return heading + "\n" + _table(header, body, {2, 3, 4, 5, 6, 7})
