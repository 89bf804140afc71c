"""`clawd probe` (an operator's tool) against real listeners.

`clawd probe` runs as a subprocess (the venv's console script) with no config and a home
that does not exist, as on a peer. The daemon's own indirect probes, which read the banner
through a helper's SSH connection instead, are tested in test_indirect.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sshpeers import SshFleet

from clawd.cli import main as cli
from clawd.sources.probe import ProbeUsageError, check, escape, parse_target

pytestmark = pytest.mark.timeout(30)

CLAWD = Path(sys.executable).parent / "clawd"
PROBE = f"{CLAWD} probe"
HOME_PROBE = "~/bin/clawd probe"  # a helper's own install, found through its HOME


@pytest.fixture(scope="module", autouse=True)
def _clawd_script() -> None:
    assert CLAWD.is_file(), f"{CLAWD} missing: pip install -e . in the venv"


# --------------------------------------------------------------------------- clawd probe


@dataclass
class Ran:
    code: int | None
    out: str
    err: str
    seconds: float

    def json(self) -> dict[str, object]:
        assert len(self.out.splitlines()) == 1, self.out
        answer = json.loads(self.out)
        assert isinstance(answer, dict)
        return answer


async def clawd_probe(*args: str) -> Ran:
    """`clawd probe ARGS` as a peer runs it: no config, no home, no CLAW_HOME."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent/clawd-probe"}
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(CLAWD),
        "probe",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    seconds = time.monotonic() - start
    return Ran(proc.returncode, out.decode(), err.decode(), seconds)


@contextlib.asynccontextmanager
async def talker(address: str, payload: bytes, *, close: bool = False) -> AsyncIterator[int]:
    """A TCP listener that sends `payload` to each client (then hangs up if `close`)."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(payload)
        await writer.drain()
        if close:
            writer.close()

    server = await asyncio.start_server(handle, address, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[SshFleet]:
    keys = tmp_path / "keys"
    keys.mkdir()
    async with SshFleet(keys) as ssh_fleet:
        yield ssh_fleet


async def test_probe_reaches_a_real_ssh_server(fleet: SshFleet) -> None:
    peer = await fleet.add_peer("127.0.23.2")
    target = f"{peer.address}:{peer.port}"

    as_json, human = await asyncio.gather(clawd_probe(target, "--json"), clawd_probe(target))

    assert as_json.code == 0, as_json.err
    answer = as_json.json()
    assert answer["target"] == target
    assert answer["reachable"] is True and answer["tcp"] is True and answer["error"] is None
    assert str(answer["banner"]).startswith("SSH-2.0-AsyncSSH")
    assert isinstance(answer["ms"], float) and 0 < answer["ms"] < 3000
    assert list(answer) == ["target", "reachable", "tcp", "banner", "ms", "error"]
    assert human.code == 0 and human.err == ""
    assert human.out.count("\n") == 1
    assert human.out.startswith(f"{target} reachable: SSH-2.0-AsyncSSH")
    assert fleet.counters.authenticated == 0  # read the banner, never logged in


@pytest.mark.parametrize(
    ("address", "form"),
    [("::1", "[{host}]:{port}"), ("127.0.0.1", "localhost:{port}")],
    ids=["ipv6-brackets", "host-name"],
)
async def test_probe_target_forms(address: str, form: str) -> None:
    async with talker(address, b"SSH-2.0-Test_1.0\r\n") as port:
        ran = await clawd_probe(form.format(host=address, port=port), "--json")
    assert ran.code == 0, ran.out + ran.err
    assert ran.json()["banner"] == "SSH-2.0-Test_1.0"


async def test_probe_closed_port_is_refused() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, then released
        sock.bind(("127.0.23.3", 0))
        port = sock.getsockname()[1]
    ran = await clawd_probe(f"127.0.23.3:{port}", "--json")
    assert ran.code == 1 and ran.err == ""
    answer = ran.json()
    assert answer["reachable"] is False and answer["tcp"] is False
    assert answer["error"] == "connection refused" and answer["banner"] is None


async def test_probe_silent_listener_times_out_in_time(fleet: SshFleet) -> None:
    silent = await fleet.add_silent_peer("127.0.23.4")
    ran = await clawd_probe(f"{silent.address}:{silent.port}", "--timeout", "0.5", "--json")
    assert ran.code == 1, ran.err
    answer = ran.json()
    assert answer["error"] == "timed out after 0.5s waiting for the SSH banner"
    assert answer["tcp"] is True and answer["reachable"] is False
    assert 500 <= float(str(answer["ms"])) < 1000
    # The timeout plus Python's start-up with room for a busy machine; `ms` above is
    # the probe's own measure of honouring the timeout.
    assert ran.seconds < 0.5 + 5.0
    assert silent.accepted == 1


ESC_BANNER = b"Welcome to host\r\nSSH-2.0-Evil\x1b[2J\rFORGED line\x07\\x\r\n"
ESC_SHOWN = "SSH-2.0-Evil\\x1b[2J\\x0dFORGED line\\x07\\\\x"


def one_printable_line(text: str) -> bool:
    return text.count("\n") <= 1 and all(c == "\n" or " " <= c < "\x7f" for c in text)


@pytest.mark.parametrize(
    ("payload", "close", "reachable", "expect"),
    [
        # an HTTP server with terminal escapes, then it hangs up
        (
            b"\x1b[2J\x1b[31mHTTP/1.1 400 Bad Request\r\n\r\n",
            True,
            False,
            "connection closed without an SSH banner after '\\x1b[2J\\x1b[31mHTTP/1.1 400 Bad Re",
        ),
        (b"hello\r\n" * 20, False, False, "not an SSH server: no SSH banner in 11 lines: 'hello'"),
        (b"A" * 400, False, False, "not an SSH server: a line longer than 255 bytes"),
        (b"SSH-2.0-ok", True, False, "connection closed without an SSH banner after 'SSH-2.0-ok'"),
        # other lines before the banner are allowed; the banner's own escapes are escaped
        (ESC_BANNER, False, True, ESC_SHOWN),
        (b"SSH-2.0-" + b"L" * 240 + b"\r\n", False, True, "SSH-2.0-" + "L" * 89 + "..."),
    ],
    ids=["ansi-http", "endless-lines", "long-line", "no-line-end", "escaped-banner", "long-banner"],
)
async def test_garbage_answers_stay_one_escaped_line(
    payload: bytes, close: bool, reachable: bool, expect: str
) -> None:
    async with talker("127.0.23.5", payload, close=close) as port:
        result = await check("127.0.23.5", port, 2)
    assert result.reachable is reachable and result.tcp
    if reachable:
        assert result.banner == expect and len(expect) <= 100 and result.error is None
    else:
        assert result.banner is None and str(result.error).startswith(expect)
    for line in (result.json_line(), result.human_line()):
        assert one_printable_line(line), line
    assert expect in result.human_line()


async def test_probe_escapes_a_hostile_banner_end_to_end() -> None:
    async with talker("127.0.23.6", ESC_BANNER) as port:
        target = f"127.0.23.6:{port}"
        as_json, human = await asyncio.gather(clawd_probe(target, "--json"), clawd_probe(target))
    for ran in (as_json, human):
        assert ran.code == 0 and ran.err == "", ran
        assert ran.out.endswith("\n") and one_printable_line(ran.out), ran
    assert as_json.json()["banner"] == ESC_SHOWN
    assert human.out == f"{target} reachable: {ESC_SHOWN} ({human.out.rsplit('(', 1)[1]}"


BAD_USAGE = [
    ["host:0"],
    ["host:65536"],
    ["host:ssh"],
    ["host:"],
    ["[::1"],
    ["[host]:22"],
    ["[::1]x"],
    ["two words"],
    ["bad\x1b[2Jhost\nerror: forged"],
    ["x", "--timeout", "abc"],
    ["x", "--timeout", "0"],
    ["x", "--timeout", "-1"],
    ["x", "--timeout", "inf"],
    ["x", "--timeout", "nan"],
    ["x", "--timeout", "1000"],
]


@pytest.mark.parametrize("args", BAD_USAGE, ids=repr)
def test_bad_usage_is_one_error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", *args, "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and one_printable_line(err), err


async def test_probe_bad_usage_end_to_end() -> None:
    bad_target, bad_timeout, missing = await asyncio.gather(
        clawd_probe("bad\x1b[2Jhost:22", "--json"),
        clawd_probe("127.0.0.1:22", "--timeout", "0"),
        clawd_probe(),
    )
    for ran in (bad_target, bad_timeout):
        assert ran.code == 2 and ran.out == "", ran
        assert ran.err.startswith("error: ") and one_printable_line(ran.err), ran
    # argparse's own message: usage, then one error line
    assert missing.code == 2 and missing.out == "" and "Traceback" not in missing.err
    assert missing.err.strip().splitlines()[-1].endswith("required: TARGET")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.5:2222", ("10.0.0.5", 2222)),
        ("peer-3.local", ("peer-3.local", 22)),
        ("[fe80::1%eth0]:22", ("fe80::1%eth0", 22)),
        ("[::1]", ("::1", 22)),
        ("2001:db8::7", ("2001:db8::7", 22)),
    ],
)
def test_parse_target(text: str, parsed: tuple[str, int]) -> None:
    assert parse_target(text) == parsed


def test_parse_target_rejects_option_like_and_empty() -> None:
    for text in ("", "-oProxyCommand=x", ":22", "a..b:", "host%eth0"):
        with pytest.raises(ProbeUsageError):
            parse_target(text)


def test_escape_bounds_and_escapes() -> None:
    assert escape(b"SSH-2.0-ok", 100) == "SSH-2.0-ok"
    assert escape(b"a\nb\\\xff", 100) == "a\\x0ab\\\\\\xff"
    cut = escape(b"\x00" * 50, 100)
    assert len(cut) <= 100 and cut.endswith("...")
