"""The delivery half of notifications: outbox on disk, Apprise receivers, delivery tasks.

Real parts: the apprise library posting over HTTP (its json:// plugin) to an aiohttp
server on 127.0.0.1, real files in tmp_path, structlog rendering as the daemon does.
"""

from __future__ import annotations

import asyncio
import io
import json
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from clawd.core.logs import configure_logging
from clawd.serve.alerts.apprise_receiver import AppriseReceiver
from clawd.serve.alerts.delivery import Delivery
from clawd.serve.alerts.message import Message
from clawd.serve.alerts.outbox import CURSORS_FILE, OUTBOX_FILE, Outbox
from clawd.serve.alerts.receivers import DeliveryError, redact_url, scrub

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
WAIT = 15.0  # generous: the assertions wait for an outcome, never for a duration


def msg(n: int, event: str = "offline") -> Message:
    return Message(
        key=f"k{n}",
        event=event,
        title=f"title {n}",
        body=f"body {n}",
        at=T0 + timedelta(seconds=n),
        gateway=f"gw{n}",
    )


@dataclass
class Post:
    method: str
    content_type: str
    body: dict[str, Any]
    at: float  # monotonic, when it arrived


@dataclass
class Hook:
    """A webhook server: keeps what is posted to each path; a path in `failing` gets 500."""

    port: int = 0
    posts: dict[str, list[Post]] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # 500s answered, per path
    failing: set[str] = field(default_factory=set)
    answer_500: str = "down"

    async def take(self, request: web.Request) -> web.Response:
        if request.path in self.failing:
            self.refused[request.path] = self.refused.get(request.path, 0) + 1
            return web.Response(status=500, text=self.answer_500)
        post = Post(request.method, request.content_type, await request.json(), time.monotonic())
        self.posts.setdefault(request.path, []).append(post)
        return web.Response(text="ok")

    def url(self, path: str, auth: str = "") -> str:
        return f"json://{auth}127.0.0.1:{self.port}{path}"

    def titles(self, path: str) -> list[str]:
        return [p.body["title"] for p in self.posts.get(path, [])]


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    made = Hook()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", made.take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    made.port = int(runner.addresses[0][1])
    try:
        yield made
    finally:
        await runner.cleanup()


async def until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(delivery: Delivery) -> AsyncIterator[Delivery]:
    ready = asyncio.Event()
    task = asyncio.create_task(delivery.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT)
        yield delivery
    finally:
        delivery.stop()
        await asyncio.wait_for(task, 5.0)  # stop() returns run() soon


async def append(outbox: Outbox, *messages: Message) -> list[bool]:
    return await asyncio.to_thread(lambda: [outbox.append(m) for m in messages])


def capture() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("debug", stream)
    return stream


def events(stream: io.StringIO, name: str) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if f"event={name} " in line + " "]


def _parsed(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return line


def on_disk(directory: Path) -> tuple[dict[str, Any], list[Any]]:
    """The cursors, and the outbox's lines (parsed where they are JSON)."""
    lines = (directory / OUTBOX_FILE).read_text().splitlines()
    cursors = json.loads((directory / CURSORS_FILE).read_text())["cursors"]
    return cursors, [_parsed(line) for line in lines]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_delivered_in_order_once_each_to_two_receivers(hook: Hook, tmp_path: Path) -> None:
    directory = tmp_path / "alerts"
    outbox = await asyncio.to_thread(Outbox, directory)
    a, b = AppriseReceiver(hook.url("/a")), AppriseReceiver(hook.url("/b"))
    async with running(Delivery(outbox, [a, b])) as delivery:
        assert await append(outbox, *(msg(n) for n in range(5))) == [True] * 5
        delivery.wake()
        await until(lambda: len(hook.titles("/a")) == len(hook.titles("/b")) == 5, "both got 5")
        await asyncio.sleep(0.3)  # room for a duplicate to show up
        status = delivery.status()
    expected = [f"title {n}" for n in range(5)]
    assert hook.titles("/a") == hook.titles("/b") == expected
    first = hook.posts["/a"][0]
    # What apprise's json:// plugin sends: a POST of this JSON object.
    assert (first.method, first.content_type) == ("POST", "application/json")
    assert first.body == {
        "version": "1.0",
        "title": "title 0",
        "message": "body 0",
        "attachments": [],
        "type": "failure",  # offline
    }
    assert [(s["receiver"], s["pending"], s["delivered"], s["failing_since"]) for s in status] == [
        (a.name, 0, 5, None),
        (b.name, 0, 5, None),
    ]
    cursors, lines = on_disk(directory)
    assert cursors == {a.id: 5, b.id: 5}
    assert lines[0] == {"outbox": 1, "base": 0}
    assert [line["key"] for line in lines[1:]] == [f"k{n}" for n in range(5)]
    assert Message.from_json(lines[1]) == msg(0)
    assert mode(directory) == 0o700
    assert mode(directory / OUTBOX_FILE) == mode(directory / CURSORS_FILE) == 0o600


async def test_a_receiver_down_then_back_loses_nothing(hook: Hook, tmp_path: Path) -> None:
    logs = capture()
    outbox = await asyncio.to_thread(Outbox, tmp_path / "alerts")
    a = AppriseReceiver(hook.url("/alpha"))
    b = AppriseReceiver(hook.url("/bravo-hook", auth="claw:hunter22@"))
    hook.failing.add("/bravo-hook")
    delivery = Delivery(outbox, [a, b], retry_initial=0.05, retry_max=0.2)
    async with running(delivery):
        await append(outbox, *(msg(n) for n in range(3)))
        delivery.wake()
        await until(lambda: len(hook.titles("/alpha")) == 3, "the working receiver got 3")
        await until(lambda: hook.refused.get("/bravo-hook", 0) >= 4, "retries while down")
        down = {s["receiver"]: s for s in delivery.status()}[b.name]
        assert down["pending"] == 3
        assert down["failing_since"] is not None
        assert "error=500" in down["last_error"]
        await append(outbox, msg(3), msg(4, "recovery"))
        delivery.wake()
        await until(lambda: len(hook.titles("/alpha")) == 5, "the working receiver got 5")
        hook.failing.clear()
        await until(lambda: len(hook.titles("/bravo-hook")) == 5, "the receiver is back")
        await asyncio.sleep(0.3)
    expected = [f"title {n}" for n in range(5)]
    assert hook.titles("/alpha") == hook.titles("/bravo-hook") == expected
    assert hook.posts["/bravo-hook"][4].body["type"] == "success"  # recovery
    failed = events(logs, "alerts_delivery_failed")
    assert len(failed) == 1, failed  # once when it starts failing, not per retry
    assert f"receiver={b.name} " in failed[0]
    assert b.name == f"json://***@127.0.0.1:{hook.port}/***"
    assert "error=500" in failed[0]
    assert "retry_in_s=" in failed[0]
    recovered = events(logs, "alerts_receiver_recovered")
    assert len(recovered) == 1
    assert f"receiver={b.name} " in recovered[0]
    assert "after_s=" in recovered[0]
    assert len(events(logs, "alerts_delivered")) == 10
    assert "hunter22" not in logs.getvalue()
    assert "bravo-hook" not in logs.getvalue()


async def test_a_restart_delivers_only_what_was_not_delivered(hook: Hook, tmp_path: Path) -> None:
    directory = tmp_path / "alerts"
    urls = hook.url("/a"), hook.url("/b")
    hook.failing.add("/b")
    outbox = await asyncio.to_thread(Outbox, directory)
    first = Delivery(outbox, [AppriseReceiver(u) for u in urls], retry_initial=0.05)
    async with running(first):
        await append(outbox, msg(0), msg(1), msg(2))
        first.wake()
        await until(lambda: len(hook.titles("/a")) == 3, "a got 3")
    a, b = (AppriseReceiver(u) for u in urls)  # a new process: new objects, the same ids
    assert on_disk(directory)[0] == {a.id: 3, b.id: 0}

    hook.failing.clear()
    outbox = await asyncio.to_thread(Outbox, directory)
    assert await append(outbox, msg(1), msg(3), msg(3)) == [False, True, False]
    async with running(Delivery(outbox, [a, b])) as second:
        second.wake()
        await until(lambda: len(hook.titles("/b")) == 4, "b got what it missed")
        await until(lambda: len(hook.titles("/a")) == 4, "a got the new one")
        await asyncio.sleep(0.3)
    assert hook.titles("/a") == hook.titles("/b") == [f"title {n}" for n in range(4)]
    cursors, lines = on_disk(directory)
    assert cursors == {a.id: 4, b.id: 4}
    assert [line["key"] for line in lines[1:]] == ["k0", "k1", "k2", "k3"]


async def test_a_torn_last_line_is_skipped_and_the_rest_delivered(
    hook: Hook, tmp_path: Path
) -> None:
    directory = tmp_path / "alerts"
    receiver = AppriseReceiver(hook.url("/a"))
    outbox = await asyncio.to_thread(Outbox, directory)
    await asyncio.to_thread(outbox.register, receiver.id)
    await append(outbox, msg(0), msg(1), msg(2))
    with (directory / OUTBOX_FILE).open("ab") as fh:
        fh.write(b'{"key":"k9","event":"off')  # the daemon was killed mid-append

    logs = capture()
    outbox = await asyncio.to_thread(Outbox, directory)
    skipped = events(logs, "alerts_outbox_line_skipped")
    assert len(skipped) == 1
    assert f"path={directory / OUTBOX_FILE}:5 " in skipped[0]
    assert await append(outbox, msg(3)) == [True]
    async with running(Delivery(outbox, [receiver])) as delivery:
        delivery.wake()
        await until(lambda: len(hook.titles("/a")) == 4, "the four whole messages")
    assert hook.titles("/a") == ["title 0", "title 1", "title 2", "title 3"]
    reopened = await asyncio.to_thread(Outbox, directory)
    await asyncio.to_thread(reopened.register, receiver.id)
    assert await asyncio.to_thread(reopened.pending, receiver.id) == []
    assert on_disk(directory)[0] == {receiver.id: 5}  # the torn line counts as a line


def test_compaction_keeps_the_undelivered_and_the_cursors(tmp_path: Path) -> None:
    directory = tmp_path / "alerts"
    outbox = Outbox(directory, compact_lines=3)
    for rid in ("r1", "r2"):
        outbox.register(rid)
    for n in range(6):
        outbox.append(msg(n))
    with (directory / OUTBOX_FILE).open("ab") as fh:
        fh.write(b"torn")  # an unreadable line among those kept
    outbox = Outbox(directory, compact_lines=3)
    for rid in ("r1", "r2", "gone"):
        outbox.register(rid)  # "gone": a receiver later removed from the config
    for n in range(6, 10):
        outbox.append(msg(n))
    outbox.delivered("r1", 10)
    outbox.delivered("r2", 3)
    assert len(on_disk(directory)[1]) == 1 + 11  # at 3 of 11, nothing compacted yet
    before = (directory / OUTBOX_FILE).read_bytes()

    outbox = Outbox(directory, compact_lines=3)  # a restart without "gone"
    outbox.register("r1")
    outbox.register("r2")
    outbox.delivered("r2", 2)  # past 5 lines (> 3): compacted
    cursors, lines = on_disk(directory)
    assert lines[0] == {"outbox": 1, "base": 5}
    assert len(lines) == 1 + 6  # m5, the torn line, m6..m9
    assert lines[2] == "torn"
    assert cursors == {"r1": 11, "r2": 5, "gone": 7}  # "gone" still wants lines kept
    assert outbox.pending("r2") == [msg(n) for n in range(5, 10)]
    assert outbox.append(msg(7)) is False  # still in the file

    reopened = Outbox(directory, compact_lines=3)
    reopened.register("r1")
    reopened.register("r2")
    assert reopened.pending("r2") == [msg(n) for n in range(5, 10)]
    assert reopened.pending("r1") == []
    reopened.delivered("r2", 3)  # m5, the torn line, m6, m7: compacted again
    assert reopened.pending("r2") == [msg(8), msg(9)]
    cursors, lines = on_disk(directory)
    assert lines == [{"outbox": 1, "base": 9}, msg(8).to_json(), msg(9).to_json()]
    assert cursors == {"r1": 11, "r2": 9}  # "gone" wanted only lines now dropped

    # A crash just before the rename leaves the old file with the new cursors: the
    # cursors are message numbers, so the pair is still consistent.
    (directory / OUTBOX_FILE).write_bytes(before)
    crashed = Outbox(directory, compact_lines=3)
    crashed.register("r1")
    crashed.register("r2")
    assert crashed.pending("r2") == [msg(8), msg(9)]
    assert crashed.pending("r1") == []


def test_compaction_by_size_and_a_new_receiver_starts_at_the_end(tmp_path: Path) -> None:
    directory = tmp_path / "alerts"
    outbox = Outbox(directory, compact_lines=10**6, compact_bytes=600)
    outbox.register("r1")
    outbox.register("r-old")  # removed at a reload: it must not hold the file back
    for n in range(8):
        outbox.append(msg(n))
    outbox.unregister("r-old")
    outbox.delivered("r1", 2)
    assert on_disk(directory)[1][0]["base"] == 0
    outbox.delivered("r1", 4)  # six lines of about 110 bytes: past 600
    assert on_disk(directory) == (
        {"r1": 6},
        [{"outbox": 1, "base": 6}, msg(6).to_json(), msg(7).to_json()],
    )
    outbox.register("r-new")  # added later: no history
    assert outbox.pending("r-new") == []
    assert outbox.pending("r1") == [msg(6), msg(7)]
    outbox.append(msg(8))
    assert outbox.pending("r-new") == [msg(8)]


async def test_a_burst_over_the_rate_becomes_one_digest(hook: Hook, tmp_path: Path) -> None:
    outbox = await asyncio.to_thread(Outbox, tmp_path / "alerts")
    receiver = AppriseReceiver(hook.url("/a"))
    burst = [msg(n, "offline" if n % 3 else "recovery") for n in range(12)]
    async with running(Delivery(outbox, [receiver], rate_per_minute=5)) as delivery:
        await append(outbox, *burst)
        delivery.wake()
        await until(lambda: len(hook.titles("/a")) == 5, "five notifications")
        await asyncio.sleep(0.5)  # the budget is spent: nothing more this minute
        assert len(hook.titles("/a")) == 5
        await append(outbox, msg(12))
        delivery.wake()
        await until(lambda: delivery.status()[0]["pending"] == 1, "one waits for the budget")
        status = delivery.status()[0]
    # The fifth notification of the minute is the last the budget allows: the digest.
    assert hook.titles("/a") == [*(f"title {n}" for n in range(4)), "clawd: 8 more events"]
    body = hook.posts["/a"][4].body["message"]
    assert body.splitlines() == [
        "offline: 6, recovery: 2",
        "- title 4",
        "- title 5",
        "- title 6",
        "- ... 2 more ...",
        "- title 9",
        "- title 10",
        "- title 11",
    ]
    assert (status["delivered"], status["sent"], status["pending"]) == (12, 5, 1)


async def test_the_budget_comes_back_with_the_window(hook: Hook, tmp_path: Path) -> None:
    outbox = await asyncio.to_thread(Outbox, tmp_path / "alerts")
    receiver = AppriseReceiver(hook.url("/a"))
    window = 1.0
    delivery = Delivery(outbox, [receiver], rate_per_minute=1, rate_window=window)
    async with running(delivery):
        await append(outbox, msg(0))
        delivery.wake()
        await until(lambda: len(hook.titles("/a")) == 1, "the first")
        await append(outbox, msg(1), msg(2), msg(3))
        delivery.wake()
        await until(lambda: len(hook.titles("/a")) == 2, "the digest, a window later")
    assert hook.titles("/a") == ["title 0", "clawd: 3 more events"]
    first, digest = hook.posts["/a"]
    assert digest.at - first.at >= window * 0.9  # never before the window allows


REDACTED = [
    (
        "json://claw:hunter22@hooks.example.com:8443/services/SEKRET1?token=QSEKRET&-x=QV2",
        "json://***@hooks.example.com:8443/***?token=***&-x=***",
    ),
    ("tgram://123456:ABCDEF/chat", "tgram://***/***"),  # the bot token is the "host"
    ("slack://T000/B000/XXXX", "slack://***/***"),
    ("slack://T000/B000/XXXX/#general", "slack://***/***#***"),
    ("mailto://claw:hunter22@gmail.com", "mailto://***@gmail.com"),
    ("gotify://gotify.example.org/AbCdEfTok", "gotify://gotify.example.org/***"),
    ("json://[::1]:8080/p/SEKRET1", "json://[::1]:8080/***"),
    ("json://buildbox:8080/p", "json://buildbox:8080/***"),
    ("pover://USERKEY1@TOKEN22", "pover://***@***"),
    ("json://claw:hun/ter22@example.com/p", "json://***"),  # an unencoded / in a password
    ("nonsense hunter22", "***"),
]
SECRETS = ["hunter22", "ter22", "SEKRET1", "QSEKRET", "QV2", "ABCDEF", "XXXX", "B000", "T000"]
SECRETS += ["AbCdEfTok", "USERKEY1", "TOKEN22", "123456", "general"]


@pytest.mark.parametrize(("url", "shown"), REDACTED)
def test_redact_url_keeps_scheme_and_host_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert not [s for s in SECRETS if s in shown]


def test_a_url_apprise_cannot_use_is_refused_redacted() -> None:
    with pytest.raises(ValueError, match="apprise can use") as raised:
        AppriseReceiver("nosuchscheme://claw:hunter22@example.com/SEKRET1")
    assert "nosuchscheme://***@example.com/***" in str(raised.value)
    assert "hunter22" not in str(raised.value) and "SEKRET1" not in str(raised.value)
    with pytest.raises(ValueError, match="apprise can use"):
        AppriseReceiver("json://example.com/a json://example.com/b")  # one URL per entry


def test_scrub_hides_every_hidden_part() -> None:
    hidden = ["claw:hunter22", "claw", "hunter22", "SEKRET%2F1"]
    text = "failed for claw: hunter22 at SEKRET/1\nsecond line password=xyz"
    assert scrub(text, hidden) == "failed for ***: *** at *** second line password=***"


async def test_a_delivery_error_holds_no_secret(
    hook: Hook, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    hook.failing.add("/h/SEKRET1")
    hook.answer_500 = "denied for claw:hunter22 at /h/SEKRET1"  # a server echoing the URL
    url = hook.url("/h/SEKRET1?-k=QSEKRET", auth="claw:hunter22@")
    errors: list[str] = []
    with pytest.raises(DeliveryError) as raised:
        await AppriseReceiver(url).send(msg(0))
    errors.append(str(raised.value))
    closed = AppriseReceiver("json://claw:hunter22@127.0.0.1:1/h/SEKRET1?-k=QSEKRET")
    with pytest.raises(DeliveryError) as raised:
        await closed.send(msg(0))  # nothing listens on port 1: connection refused
    errors.append(str(raised.value))
    slow = AppriseReceiver(hook.url("/h/SEKRET1"), timeout=0.000_001)
    with pytest.raises(DeliveryError, match="no answer within"):
        await slow.send(msg(0))
    assert "error=500" in errors[0]
    assert "Connection error" in errors[1]
    out, err = capfd.readouterr()
    for text in (*errors, out, err):
        assert not [s for s in ("hunter22", "SEKRET1", "QSEKRET") if s in text], text


def test_one_url_twice_is_one_receiver(tmp_path: Path) -> None:
    url = "json://127.0.0.1:9/a"
    delivery = Delivery(Outbox(tmp_path / "alerts"), [AppriseReceiver(url), AppriseReceiver(url)])
    assert [s["receiver"] for s in delivery.status()] == ["json://127.0.0.1:9/***"]
