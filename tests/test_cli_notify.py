"""Issue 16: `clawd notify test` sends a test message to every receiver and says, per
receiver, ok or why not -- without the secret parts of their URLs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from webhooks import WebhookReceiver


def write_config(home: Path, urls: list[str]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    config = {"instance": {"gatewayId": "gw-a", "name": "alpha"}, "notify": {"apprise": urls}}
    (home / "config.json").write_text(json.dumps(config))
    (home / "config.json").chmod(0o600)


async def clawd(home: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clawd.cli.main",
        *args,
        env=dict(os.environ, CLAW_HOME=str(home)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_notify_test_reaches_every_receiver_and_names_the_one_that_failed(
    tmp_path: Path,
) -> None:
    async with WebhookReceiver(path="/hook/T0KEN-s3cret") as receiver:
        dead = f"json://claw:pa55word@127.0.0.1:{closed_port()}/hook/ANOTHER-s3cret"
        write_config(tmp_path, [receiver.apprise_url, dead])
        code, out, err = await clawd(tmp_path, "notify", "test")
        assert code == 1, (out, err)  # one of two failed
        assert len(receiver.posts) == 1
        assert receiver.posts[0]["title"] == "clawd: test notification"
        assert "alpha" in receiver.posts[0]["message"]
        lines = out.splitlines()
        assert len(lines) == 2 and lines[0].endswith("  ok"), out
        assert not lines[1].endswith("  ok"), out
        for secret in ("T0KEN-s3cret", "ANOTHER-s3cret", "pa55word"):
            assert secret not in out + err

        code, out, _ = await clawd(tmp_path, "notify", "test", "--json")
        rows = json.loads(out)["receivers"]
        assert [r["ok"] for r in rows] == [True, False] and rows[1]["error"]
        assert len(receiver.posts) == 2


async def test_notify_test_without_receivers_says_so(tmp_path: Path) -> None:
    write_config(tmp_path, [])
    code, out, err = await clawd(tmp_path, "notify", "test")
    assert (code, out) == (2, "")
    assert err.strip() == "error: no receivers in notify.apprise or notify.alertmanager (none)"
