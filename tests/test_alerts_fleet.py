"""Issue 16: one notification per real event for the whole fleet.

Real machines (tests/fleetharness.py: OpenSSH sshd, unix user and `clawd run` each), the
real Apprise library posting over HTTP to a webhook receiver on loopback (json://).

* backend postgres (five machines, k=3 observers): m5 is powered off and on; the
  receiver gets exactly one `offline` and one `recovery` notification -- sent by the
  acting leader from the fleet's record, not one per observer -- and the receiver was
  down when the outage came: nothing lost once it is back;
* a real Alertmanager (notify.alertmanager) gets one alert for an outage and its
  resolution, and notifies its webhook of both;
* a silence (from any machine: a table) records the outage with its id and tells nobody;
* backend json (three machines): each instance tells what it saw itself (there is no
  shared record to tell from): one `offline` per observer, but for the one that
  silenced the machine (a JSON silence is the machine's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import alertmanagers
import pytest
from daemonproc import run_cli
from fleetharness import Fleet, FleetTimings, MachineSpec, StatusSample, fleet_of
from pgserver import BasePg
from sshpeers import sshd_path
from webhooks import WebhookReceiver

from clawd.serve.alerts.service import SILENCES_POLL_SECONDS

TIMINGS = FleetTimings(interval=0.5, timeout=0.4, offline_after_missed=3)
AGREE_TIMEOUT = 90.0
EVENT_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a unix user per machine needs root"),
]


def notify_config(receiver: WebhookReceiver, backend: str) -> dict[str, Any]:
    return {
        "backend": backend,
        "storage": {"flushIntervalSeconds": 0.1, "leaderLease": True},
        "detection": {"indirectProbes": 0},
        "notify": {"apprise": [receiver.apprise_url], "retryMaxSeconds": 2},
    }


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, pg: BasePg, machines: int, config: dict[str, Any]
) -> AsyncIterator[tuple[Fleet, list[str]]]:
    """A fleet of `machines` started, every machine seeing every other online."""
    specs = [MachineSpec(f"m{n}", n) for n in range(1, machines + 1)]
    ids = [s.gateway_id for s in specs]
    async with fleet_of(
        tmp_path / "fleet",
        pg,
        specs,
        timings=TIMINGS,
        extra_config=config,
        user_prefix="clawtell",  # not the other fleet tests' logins
    ) as fleet:
        await fleet.start_all()
        await fleet.until(all_online(ids), AGREE_TIMEOUT)
        yield fleet, ids


def all_online(ids: list[str]) -> Any:
    def check(samples: list[StatusSample]) -> bool:
        return all(s.peer_status(g) == "online" for s in samples for g in ids if g != s.gateway_id)

    return check


def titled(receiver: WebhookReceiver, text: str) -> list[dict[str, Any]]:
    return [p for p in receiver.posts if text in str(p.get("title"))]


async def test_a_postgres_fleet_sends_one_notification_per_real_event(
    tmp_path: Path, pg_server: BasePg
) -> None:
    async with WebhookReceiver() as receiver:
        config = notify_config(receiver, "postgres")
        async with running(tmp_path, pg_server, 5, config) as (fleet, ids):
            assert receiver.posts == []  # a start is no news (no `online`, no leader change)

            receiver.failing = True  # the receiver is down when the outage comes
            await fleet.power_off("m5")

            async def recorded() -> bool:
                return len(await fleet.db_incidents("offline")) == 1

            await fleet.wait_for(recorded, EVENT_TIMEOUT)
            await asyncio.sleep(3 * TIMINGS.interval)  # a few retries fail meanwhile
            assert receiver.posts == []

            async def leader_says_failing() -> bool:  # `clawd status`, as a person runs it
                shown = await asyncio.to_thread(run_cli, fleet.machines["m1"].home, "status")
                return (
                    f"notifications to json://127.0.0.1:{receiver.port}/***: 1 waiting, failing"
                    in shown.stdout
                )

            await fleet.wait_for(leader_says_failing, EVENT_TIMEOUT, poll=0.5)
            receiver.failing = False
            took = await receiver.until(lambda _: bool(titled(receiver, "is offline")), 30)
            print(f"\nthe receiver back: the `offline` notification {took:.1f} s later")

            await fleet.power_on("m5")
            await fleet.until(all_online(ids), AGREE_TIMEOUT)
            await receiver.until(lambda _: bool(titled(receiver, "is back")), EVENT_TIMEOUT)
            await asyncio.sleep(6 * TIMINGS.interval)  # room for a duplicate to arrive
            print(f"notifications: {receiver.titles()}")
            assert receiver.titles() == [
                "clawd: machine-m5 is offline",
                "clawd: machine-m5 is back",
            ]
            assert "Seen by" in str(receiver.posts[0]["message"])
            assert "Down for" in str(receiver.posts[1]["message"])
            for post in receiver.posts:  # nothing secret in what is sent
                assert fleet.db is not None and fleet.db.password not in str(post)


async def test_a_silence_records_the_outage_and_tells_nobody(
    tmp_path: Path, pg_server: BasePg
) -> None:
    """A planned reboot: silenced from one machine (fleet-wide: the table), m3 goes down,
    the row says silenced and nobody is told; the silence removed, its return is told."""
    async with WebhookReceiver() as receiver:
        config = notify_config(receiver, "postgres")
        async with running(tmp_path, pg_server, 3, config) as (fleet, _ids):
            home = fleet.machines["m2"].home  # not the leader: any machine silences
            added = run_cli(home, "silence", "add", "m3", "--for", "1h", "--reason", "reboot")
            assert added.returncode == 0, added.stderr
            silence_id = added.stdout.split(":")[0]
            await fleet.power_off("m3")

            async def flagged() -> bool:
                rows = await fleet.db_incidents("offline")
                return len(rows) == 1 and rows[0]["details"].get("silenced") == silence_id

            await fleet.wait_for(flagged, EVENT_TIMEOUT)
            await asyncio.sleep(6 * TIMINGS.interval)  # room for a notification to arrive
            assert receiver.posts == []

            assert run_cli(home, "silence", "remove", silence_id).returncode == 0
            await fleet.power_on("m3")
            await receiver.until(lambda _: bool(titled(receiver, "is back")), EVENT_TIMEOUT)
            await asyncio.sleep(6 * TIMINGS.interval)
            assert receiver.titles() == ["clawd: machine-m3 is back"]


async def test_a_json_fleet_tells_what_each_instance_saw(tmp_path: Path, pg_server: BasePg) -> None:
    async with WebhookReceiver() as receiver:
        config = notify_config(receiver, "json")
        async with running(tmp_path, pg_server, 3, config) as (fleet, _ids):
            # On JSON a silence is the machine's own: m1 silences m3, m2 does not.
            home = fleet.machines["m1"].home
            added = run_cli(home, "silence", "add", "m3", "--for", "1h", "--reason", "reboot")
            assert added.returncode == 0, added.stderr
            await asyncio.sleep(3 * SILENCES_POLL_SECONDS)  # the daemon reads the file
            await fleet.power_off("m3")
            await receiver.until(lambda _: bool(titled(receiver, "is offline")), EVENT_TIMEOUT)

            def m1_recorded() -> list[dict[str, Any]]:
                return [i for i in fleet.incidents("m1", "offline") if i["gatewayId"] == "m3"]

            async def m1_has_it() -> bool:
                return bool(m1_recorded())

            await fleet.wait_for(m1_has_it, EVENT_TIMEOUT)
            assert m1_recorded()[0]["details"]["silenced"] == added.stdout.split(":")[0]
            await asyncio.sleep(6 * TIMINGS.interval)
            assert receiver.titles() == ["clawd: machine-m3 is offline"]  # m2's, not m1's


async def test_a_real_alertmanager_gets_one_alert_per_outage_and_its_resolution(
    tmp_path: Path, pg_server: BasePg
) -> None:
    """notify.alertmanager: the fleet's leader posts one ClawdMachineDown for m3's outage
    (not one per observer) and resolves it when m3 is back; Alertmanager (Debian's, real)
    notifies its webhook of both."""
    if not alertmanagers.installed():
        pytest.fail(alertmanagers.NOT_FOUND, pytrace=False)
    async with (
        WebhookReceiver() as webhook,
        alertmanagers.running_alertmanager(webhook.port, tmp_path / "am") as am,
    ):
        config = notify_config(webhook, "postgres")
        config["notify"] = {"alertmanager": [am.url], "fleet": "lab", "retryMaxSeconds": 2}
        async with running(tmp_path, pg_server, 3, config) as (fleet, _ids):
            await fleet.power_off("m3")

            def alerts(status: str) -> list[dict[str, Any]]:
                return [
                    alert
                    for post in webhook.posts
                    for alert in post.get("alerts", [])
                    if alert["status"] == status and alert["labels"].get("gateway") == "m3"
                ]

            await webhook.until(lambda _: bool(alerts("firing")), EVENT_TIMEOUT)
            (firing,) = alerts("firing")
            assert firing["labels"]["alertname"] == "ClawdMachineDown"
            assert (firing["labels"]["fleet"], firing["labels"]["severity"]) == ("lab", "critical")
            assert await am.names() == [("ClawdMachineDown", "m3")]  # one alert, not three

            await fleet.power_on("m3")
            await webhook.until(lambda _: bool(alerts("resolved")), EVENT_TIMEOUT)
            await asyncio.sleep(6 * TIMINGS.interval)
            assert len(alerts("firing")) == 1 and len(alerts("resolved")) == 1
            assert await am.names() == []
