"""Notifications of a real fleet: how many per real event, and how long after the verdict.

``python -m bench.notify_latency [--quick] [--machines N]`` (in ``make bench``; needs root
and sshd). A fleet of ``tests/fleetharness.py`` (each machine a real OpenSSH sshd, its own
unix user and ``clawd run``; one shared PostgreSQL; k=3 observers; pings every 2 s) tells
a webhook receiver on loopback through the real Apprise library (``json://``). Non-leader
machines are powered off and on, one after the other. The benchmark LISTENs on
``clawd_incident`` itself: the moment a fleet row is committed is the fleet's verdict; the
receiver stamps each notification as it arrives.

Figures: notifications per real event (goal 1: the acting leader tells each row once, not
every observer), verdict → notification at the receiver (median / max), and power-off →
notification (what a person waits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

# tests/ is on sys.path (bench.fleet_observers put it there).
from fleetharness import (  # type: ignore[import-not-found, unused-ignore]
    Fleet,
    MachineSpec,
    StatusSample,
    fleet_of,
)
from pgserver import BasePg, PgUnavailableError, start_pg  # type: ignore[import-not-found, unused-ignore]
from webhooks import WebhookReceiver  # type: ignore[import-not-found, unused-ignore]

from bench.fleet_observers import TIMINGS, code_state, one_run_at_a_time, preflight

SECTION = "notify-latency"
USER_PREFIX = "clawntf"  # not the fleet tests' nor fleet-observers' logins
GOAL_VERDICT_TO_RECEIVER_S = 2.0
AGREE_TIMEOUT = 180.0
EVENT_TIMEOUT = 90.0
QUIET_S = 6.0  # after the last event: room for a duplicate to arrive


@dataclass
class Event:
    victim: str
    kind: str  # "offline" / "recovery"
    acted: float  # power-off / power-on, monotonic
    verdict: float | None = None  # the fleet row's NOTIFY arrived
    told: list[float] = field(default_factory=list)  # notifications at the receiver


class Stamps:
    """Arrival times of the fleet's rows (NOTIFY) and of the notifications (webhook)."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self.rows: list[tuple[float, str, str]] = []  # (monotonic, gateway, event)
        self.posts_seen = 0
        self.posts: list[tuple[float, str]] = []  # (monotonic, title)

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        data = json.loads(str(payload))
        self.rows.append((time.monotonic(), str(data["gateway_id"]), str(data["event_type"])))

    def poll_posts(self) -> None:
        fresh = self.receiver.posts[self.posts_seen :]
        self.posts_seen += len(fresh)
        self.posts.extend((time.monotonic(), str(p.get("title"))) for p in fresh)


def all_online(ids: list[str]) -> Any:
    def check(samples: list[StatusSample]) -> bool:
        return all(s.peer_status(g) == "online" for s in samples for g in ids if g != s.gateway_id)

    return check


async def wait_until(check: Any, stamps: Stamps, timeout: float) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        stamps.poll_posts()
        if check():
            return True
        await asyncio.sleep(0.05)
    return False


async def one_outage(fleet: Fleet, stamps: Stamps, victim: str, ids: list[str]) -> list[Event]:
    events = []
    for kind in ("offline", "recovery"):
        event = Event(victim, kind, time.monotonic())
        if kind == "offline":
            await fleet.power_off(victim)
        else:
            await fleet.power_on(victim)
        title = f"machine-{victim} is offline" if kind == "offline" else f"machine-{victim} is back"

        def arrived(ev: Event = event, title: str = title) -> bool:
            return any(t >= ev.acted and title in p for t, p in stamps.posts)

        await wait_until(arrived, stamps, EVENT_TIMEOUT)
        events.append(event)
        if kind == "recovery":
            await fleet.until(all_online(ids), AGREE_TIMEOUT)
    return events


async def run_fleet(pg: BasePg, root: Path, m: int, victims: int) -> tuple[list[Event], Stamps]:
    specs = [MachineSpec(f"m{n}", n) for n in range(1, m + 1)]
    ids = [s.gateway_id for s in specs]
    async with WebhookReceiver() as receiver:
        config = {
            "storage": {"flushIntervalSeconds": 0.1, "leaderLease": True},
            "detection": {"indirectProbes": 0},
            "notify": {"apprise": [receiver.apprise_url]},
        }
        stamps = Stamps(receiver)
        async with fleet_of(
            root / f"m{m}", pg, specs, timings=TIMINGS, extra_config=config,
            user_prefix=USER_PREFIX,
        ) as fleet:  # fmt: skip
            await fleet.start_all(ready_timeout=120)
            await fleet.until(all_online(ids), AGREE_TIMEOUT)
            assert fleet.db is not None
            listener = await asyncpg.connect(fleet.db.dsn)
            try:
                await listener.add_listener("clawd_incident", stamps.on_notify)
                events: list[Event] = []
                for victim in ids[-victims:]:  # never m1, the leader
                    events += await one_outage(fleet, stamps, victim, ids)
                await asyncio.sleep(QUIET_S)
                stamps.poll_posts()
            finally:
                await listener.close()
    for event in events:
        title = f"machine-{event.victim} is {'offline' if event.kind == 'offline' else 'back'}"
        event.told = [t for t, p in stamps.posts if title in p and t >= event.acted]
        rows = [t for t, g, e in stamps.rows if g == event.victim and e == event.kind]
        event.verdict = min((t for t in rows if t >= event.acted), default=None)
    return events, stamps


def render(events: list[Event], stamps: Stamps, m: int, facts: dict[str, str]) -> str:
    counts = [len(e.told) for e in events]
    lat = [e.told[0] - e.verdict for e in events if e.told and e.verdict is not None]
    waited = [e.told[0] - e.acted for e in events if e.told]
    per_event = statistics.fmean(counts) if counts else float("nan")
    med = statistics.median(lat) if lat else float("nan")
    lines = [
        f"Fleet of {m} real machines (tests/fleetharness.py: OpenSSH sshd, unix user and"
        " `clawd run` each; one shared PostgreSQL; k=3 observers; pings every 2 s, offline"
        " after 3 missed), the real Apprise library posting to a webhook on loopback. Code:"
        f" {facts['code']}; {facts['pg']}; {facts['when']}.",
        "",
        "| figure | goal | measured | ratio |",
        "|---|---|---|---|",
        f"| notifications per real event ({len(events)} events: "
        f"{len(events) // 2} power-offs and power-ons) | 1 | "
        f"{', '.join(str(c) for c in counts)} | {per_event:.2f} "
        f"{'✓' if counts and all(c == 1 for c in counts) else '✗'} |",
        f"| fleet verdict (row committed) → notification at the receiver, s (median / max) | "
        f"≤ {GOAL_VERDICT_TO_RECEIVER_S:.0f} | "
        + (f"{med:.2f} / {max(lat):.2f}" if lat else "—")
        + f" | {med / GOAL_VERDICT_TO_RECEIVER_S:.2f} "
        f"{'✓' if lat and med <= GOAL_VERDICT_TO_RECEIVER_S else '✗'} |",
        "",
        "| victim | event | power → verdict, s | verdict → receiver, s | power → receiver, s |"
        " notifications |",
        "|---|---|---|---|---|---|",
    ]
    for e in events:
        verdict = f"{e.verdict - e.acted:.2f}" if e.verdict is not None else "—"
        told = f"{e.told[0] - e.verdict:.2f}" if e.told and e.verdict is not None else "—"
        total = f"{e.told[0] - e.acted:.2f}" if e.told else "—"
        lines.append(f"| {e.victim} | {e.kind} | {verdict} | {told} | {total} | {len(e.told)} |")
    lines += [
        "",
        f"Power-off / power-on → notification (what a person waits), median "
        f"{statistics.median(waited):.1f} s."
        if waited
        else "No notification arrived.",
        f"Notifications in all: {len(stamps.posts)} ({', '.join(p for _, p in stamps.posts)}).",
    ]
    return "\n".join(lines)


async def measure(m: int, victims: int) -> str:
    preflight()
    with one_run_at_a_time():
        try:
            pg = await asyncio.to_thread(start_pg)
        except PgUnavailableError as exc:
            raise RuntimeError(f"notify-latency cannot run: {exc}") from None
        root = Path(tempfile.mkdtemp(prefix="bench-notify-latency-"))
        try:
            facts = {
                "pg": str(pg.fetchval("SELECT version()")).split(" on ")[0],
                "code": code_state(),
                "when": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            }
            events, stamps = await run_fleet(pg, root, m, victims)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(pg.cleanup)
            shutil.rmtree(root, ignore_errors=True)
    return render(events, stamps, m, facts)


def run(quick: bool, machines: int | None = None) -> str:
    m = machines or (5 if quick else 8)
    return asyncio.run(measure(m, 1 if quick else 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.notify_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 machines, one outage")
    parser.add_argument("--machines", type=int, help="fleet size (default 8)")
    args = parser.parse_args(argv)
    print(run(args.quick, args.machines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
