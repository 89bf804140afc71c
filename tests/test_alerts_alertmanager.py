"""The Alertmanager receiver against a real Alertmanager (Debian's prometheus-alertmanager),
started per test on loopback with a route to a webhook (tests/webhooks.py) that keeps what
Alertmanager notifies."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alertmanagers import (
    BINARY,
    NOT_FOUND,
    Alertmanager,
    free_port,
    installed,
    running_alertmanager,
)
from webhooks import WebhookReceiver

from clawd.core.logs import configure_logging
from clawd.serve.alerts.alertmanager import AlertmanagerReceiver
from clawd.serve.alerts.delivery import Delivery
from clawd.serve.alerts.message import Message
from clawd.serve.alerts.outbox import Outbox
from clawd.serve.alerts.receivers import DeliveryError

pytestmark = pytest.mark.timeout(90)

WAIT = 15.0  # generous: the assertions wait for an outcome, never for a duration
FLEET = "testfleet"


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hook:
        yield hook


@pytest.fixture
async def alertmanager(webhook: WebhookReceiver, tmp_path: Path) -> AsyncIterator[Alertmanager]:
    if not installed():
        pytest.fail(NOT_FOUND, pytrace=False)
    async with running_alertmanager(webhook.port, tmp_path / "am") as made:
        yield made


def message(key: str, event: str, gateway: str | None = "gw-7", title: str = "") -> Message:
    return Message(
        key=key,
        event=event,
        title=title or f"clawd: {gateway} {event}",
        body=f"body of {key}",
        at=datetime.now(UTC),
        gateway=gateway,
    )


def notified(posts: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(status, alertname, gateway) of every alert in every notification."""
    return [
        (a["status"], a["labels"]["alertname"], a["labels"].get("gateway", ""))
        for post in posts
        for a in post["alerts"]
    ]


def has(*wanted: tuple[str, str, str]) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda posts: all(w in notified(posts) for w in wanted)


async def until_true(check: Callable[[], Any], what: str, timeout: float = WAIT) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def receiver(am: Alertmanager, tmp_path: Path, **kwargs: Any) -> AlertmanagerReceiver:
    return AlertmanagerReceiver(am.url, fleet=FLEET, state_dir=tmp_path / "state", **kwargs)


async def test_offline_fires_and_recovery_resolves(
    alertmanager: Alertmanager, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    am = receiver(alertmanager, tmp_path)
    try:
        down = message("k1", "offline", title="clawd: gw-7 is offline")
        posted = time.monotonic()
        await am.send(down)
        fired = await webhook.until(has(("firing", "ClawdMachineDown", "gw-7")), WAIT)
        print(f"firing notified {time.monotonic() - posted:.2f} s after the post")
        assert await alertmanager.names() == [("ClawdMachineDown", "gw-7")]
        (post,) = webhook.posts
        assert post["status"] == "firing"
        (alert,) = post["alerts"]
        assert alert["labels"] == {
            "alertname": "ClawdMachineDown",
            "gateway": "gw-7",
            "severity": "critical",
            "fleet": FLEET,
        }
        assert alert["annotations"] == {
            "summary": "clawd: gw-7 is offline",
            "description": "body of k1",
        }
        assert abs(datetime.fromisoformat(alert["startsAt"]) - down.at).total_seconds() < 0.001
        # A firing alert's end is not told to webhooks; the API shows it: now + ttl.
        assert alert["endsAt"].startswith("0001-01-01")
        (shown,) = await alertmanager.alerts()
        ends = datetime.fromisoformat(shown["endsAt"]) - datetime.now(UTC)
        assert 3000 < ends.total_seconds() <= 3600
        assert [a["labels"]["alertname"] for a in am.active()] == ["ClawdMachineDown"]
        assert fired < WAIT

        back = message("k2", "recovery")
        posted = time.monotonic()
        await am.send(back)
        await webhook.until(has(("resolved", "ClawdMachineDown", "gw-7")), WAIT)
        print(f"resolved notified {time.monotonic() - posted:.2f} s after the post")
        assert await alertmanager.names() == []
        assert notified(webhook.posts) == [
            ("firing", "ClawdMachineDown", "gw-7"),
            ("resolved", "ClawdMachineDown", "gw-7"),
        ]
        resolved = webhook.posts[-1]["alerts"][0]
        assert abs(datetime.fromisoformat(resolved["endsAt"]) - back.at).total_seconds() < 0.001
        assert am.active() == []
        state = json.loads(am.state_path.read_text())
        assert state == {"alertmanager": 1, "active": []}
        assert stat.S_IMODE(am.state_path.stat().st_mode) == 0o600
    finally:
        await am.close()


async def test_the_mapping_of_every_kind_of_event(
    alertmanager: Alertmanager, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    am = receiver(alertmanager, tmp_path)
    try:
        await am.send(message("p1", "partition", gateway="gw-1"))
        await am.send(message("f1", "flap_start", gateway="gw-2"))
        await am.send(message("u1", "unreachable", gateway="gw-3"))
        await am.send(message("t1", "test", gateway=None))
        await webhook.until(
            has(
                ("firing", "ClawdPartition", ""),
                ("firing", "ClawdMachineFlapping", "gw-2"),
                ("firing", "ClawdEvent", "gw-3"),
                ("firing", "ClawdEvent", ""),
            ),
            WAIT,
        )
        labels = {
            (a["labels"]["alertname"], a["labels"].get("event")): a["labels"]
            for post in webhook.posts
            for a in post["alerts"]
        }
        assert labels[("ClawdPartition", None)] == {
            "alertname": "ClawdPartition",
            "severity": "critical",
            "fleet": FLEET,
        }  # the fleet's: no gateway
        assert labels[("ClawdMachineFlapping", None)]["severity"] == "warning"
        assert labels[("ClawdEvent", "unreachable")] == {
            "alertname": "ClawdEvent",
            "event": "unreachable",
            "gateway": "gw-3",
            "severity": "warning",
            "fleet": FLEET,
        }
        assert labels[("ClawdEvent", "test")]["severity"] == "info"
        # One-shot events end by themselves (five minutes on); only states are kept.
        assert sorted(a["labels"]["alertname"] for a in am.active()) == [
            "ClawdMachineFlapping",
            "ClawdPartition",
        ]
        await am.send(message("p2", "partition_end", gateway="gw-9"))  # another reporter
        await am.send(message("f2", "flap_stop", gateway="gw-2"))
        await webhook.until(
            has(("resolved", "ClawdPartition", ""), ("resolved", "ClawdMachineFlapping", "gw-2")),
            WAIT,
        )
        assert am.active() == []
        assert await alertmanager.names() == [("ClawdEvent", ""), ("ClawdEvent", "gw-3")]
    finally:
        await am.close()


async def test_refresh_keeps_an_alert_past_its_ttl_and_without_it_resolves(
    alertmanager: Alertmanager, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    ttl = 3.0
    kept = receiver(alertmanager, tmp_path / "kept", ttl=ttl)
    left = receiver(alertmanager, tmp_path / "left", ttl=ttl)
    try:
        await kept.send(message("k1", "offline", gateway="gw-kept"))
        await left.send(message("k2", "offline", gateway="gw-left"))
        await webhook.until(
            has(
                ("firing", "ClawdMachineDown", "gw-kept"), ("firing", "ClawdMachineDown", "gw-left")
            ),
            WAIT,
        )
        started = time.monotonic()
        while time.monotonic() - started < 2 * ttl:
            await asyncio.sleep(1.0)
            await kept.refresh()
        # Past 2 x ttl: the refreshed one still fires, the other resolved by itself.
        assert await alertmanager.names() == [("ClawdMachineDown", "gw-kept")]
        await webhook.until(has(("resolved", "ClawdMachineDown", "gw-left")), WAIT)
        assert ("resolved", "ClawdMachineDown", "gw-kept") not in notified(webhook.posts)
        assert [a["labels"]["gateway"] for a in left.active()] == ["gw-left"]  # clawd's view
    finally:
        await kept.close()
        await left.close()


async def test_active_alerts_survive_a_new_receiver_on_the_same_state(
    alertmanager: Alertmanager, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    ttl = 3.0
    first = receiver(alertmanager, tmp_path, ttl=ttl)
    await first.send(message("k1", "offline", gateway="gw-a"))
    await first.send(message("k2", "flap_start", gateway="gw-b"))
    await first.close()
    saved = json.loads(first.state_path.read_text())
    assert sorted(a["labels"]["alertname"] for a in saved["active"]) == [
        "ClawdMachineDown",
        "ClawdMachineFlapping",
    ]

    second = receiver(alertmanager, tmp_path, ttl=ttl)  # a restart: the same URL and state
    assert second.id == first.id and second.state_path == first.state_path
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2 * ttl:
            await asyncio.sleep(1.0)
            await second.refresh()
        assert await alertmanager.names() == [
            ("ClawdMachineDown", "gw-a"),
            ("ClawdMachineFlapping", "gw-b"),
        ]
        await second.send(message("k3", "recovery", gateway="gw-a"))
        await webhook.until(has(("resolved", "ClawdMachineDown", "gw-a")), WAIT)
        assert await alertmanager.names() == [("ClawdMachineFlapping", "gw-b")]
        assert not [s for s in notified(webhook.posts) if s[0] == "resolved" and s[2] == "gw-b"]
    finally:
        await second.close()


async def test_alertmanager_down_is_a_delivery_error_without_the_password(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    url = f"http://claw:s3cret@127.0.0.1:{port}/am-SEKRET1"
    am = AlertmanagerReceiver(url, fleet=FLEET, state_dir=tmp_path)
    assert am.name == f"http://***@127.0.0.1:{port}/***"
    try:
        with pytest.raises(DeliveryError) as raised:
            await am.send(message("k1", "offline"))
        assert am.active() == []  # not taken: the same message is sent again
        await am.refresh()  # nothing active: nothing to post
    finally:
        await am.close()
    text = str(raised.value)
    assert "cannot reach Alertmanager" in text, text
    assert "\n" not in text
    out, err = capfd.readouterr()
    for shown in (text, out, err, repr(raised.value)):
        assert "s3cret" not in shown and "SEKRET1" not in shown, shown


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1:9093",
        "http://",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:9093/?x=1",
        "http://claw:s3cret@127.0.0.1:9093/a b",
        "127.0.0.1:9093",
    ],
)
def test_a_url_that_is_not_an_alertmanager_is_refused_redacted(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an Alertmanager URL") as raised:
        AlertmanagerReceiver(url, fleet=FLEET, state_dir=tmp_path)
    assert "s3cret" not in str(raised.value)


async def test_through_the_outbox_and_delivery(
    alertmanager: Alertmanager, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    outbox = await asyncio.to_thread(Outbox, tmp_path / "alerts")
    am = receiver(alertmanager, tmp_path, ttl=3.0)
    delivery = Delivery(outbox, [am], refresh_interval=1.0)
    ready = asyncio.Event()
    task = asyncio.create_task(delivery.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT)
        await asyncio.to_thread(outbox.append, message("k1", "offline", gateway="gw-e2e"))
        delivery.wake()
        await webhook.until(has(("firing", "ClawdMachineDown", "gw-e2e")), WAIT)
        await asyncio.sleep(5.0)  # past the ttl: only the delivery's refreshes keep it
        assert await alertmanager.names() == [("ClawdMachineDown", "gw-e2e")]
        await asyncio.to_thread(outbox.append, message("k2", "recovery", gateway="gw-e2e"))
        delivery.wake()
        await webhook.until(has(("resolved", "ClawdMachineDown", "gw-e2e")), WAIT)
        assert notified(webhook.posts) == [
            ("firing", "ClawdMachineDown", "gw-e2e"),
            ("resolved", "ClawdMachineDown", "gw-e2e"),
        ]
        assert delivery.status()[0]["delivered"] == 2
        assert delivery.status()[0]["failing_since"] is None
    finally:
        delivery.stop()
        await asyncio.wait_for(task, 10.0)
    assert am._session is None  # closed by the delivery at its end


def test_the_binary_is_installed() -> None:
    # Not a skip: the suite runs Alertmanager for real (scripts/install-system-deps.sh).
    if shutil.which("prometheus-alertmanager") is None and not os.access(BINARY, os.X_OK):
        pytest.fail(NOT_FOUND, pytrace=False)


@dataclass
class Refreshing:
    """A receiver with refresh() and close(), recording the order of calls."""

    id: str = "fake"
    name: str = "fake://receiver"
    calls: list[str] | None = None
    refresh_failures: int = 0

    async def send(self, message: Message) -> None:
        assert self.calls is not None
        self.calls.append(f"send {message.key}")

    async def refresh(self) -> None:
        assert self.calls is not None
        self.calls.append("refresh")
        if self.refresh_failures:
            self.refresh_failures -= 1
            raise DeliveryError("refused: HTTP 503")

    async def close(self) -> None:
        assert self.calls is not None
        self.calls.append("close")


async def test_delivery_refreshes_after_the_backlog_then_each_interval(tmp_path: Path) -> None:
    logs = io.StringIO()
    configure_logging("debug", logs)
    outbox = await asyncio.to_thread(Outbox, tmp_path / "alerts")
    fake = Refreshing(calls=[], refresh_failures=1)
    await asyncio.to_thread(outbox.register, fake.id)
    for n in range(3):
        await asyncio.to_thread(outbox.append, message(f"k{n}", "offline"))
    await asyncio.to_thread(outbox.unregister, fake.id)
    delivery = Delivery(outbox, [fake], refresh_interval=0.5, retry_initial=0.05)
    ready = asyncio.Event()
    task = asyncio.create_task(delivery.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT)

        async def refreshed(times: int) -> bool:
            assert fake.calls is not None
            return fake.calls.count("refresh") >= times

        await until_true(lambda: refreshed(3), "three refreshes")
        await asyncio.to_thread(outbox.append, message("k3", "recovery"))
        delivery.wake()

        async def sent() -> bool:
            assert fake.calls is not None
            return "send k3" in fake.calls

        await until_true(sent, "the new message, between refreshes")
        status = delivery.status()[0]
    finally:
        delivery.stop()
        await asyncio.wait_for(task, 10.0)
    assert fake.calls is not None
    # The backlog first, in order; then the first refresh (it failed: tried an interval
    # later, not at the retry backoff), and the delivery's end closes the receiver.
    assert fake.calls[:4] == ["send k0", "send k1", "send k2", "refresh"]
    assert fake.calls[-1] == "close"
    assert [c for c in fake.calls if c.startswith("send")] == [f"send k{n}" for n in range(4)]
    assert (status["delivered"], status["failing_since"]) == (4, None)
    failed = [line for line in logs.getvalue().splitlines() if "alerts_delivery_failed" in line]
    assert len(failed) == 1 and "refused: HTTP 503" in failed[0], failed
    assert "alerts_receiver_recovered" in logs.getvalue()
