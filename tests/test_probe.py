"""Indirect probes: `clawd probe` against real listeners, and the prober over real SSH.

`clawd probe` runs as a subprocess (the venv's console script) with no config and a home
that does not exist, as on a peer. The prober holds asyncssh connections to helper peers
(asyncssh servers whose commands run in a real /bin/sh) that run that same script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
import structlog
from sshpeers import SshFleet, SshPeer

from clawd.cli import main as cli
from clawd.sources.indirect import IndirectProber, ProbeVerdict, probe_command_line
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


# --------------------------------------------------------------------------- the prober


@dataclass
class Rig:
    fleet: SshFleet
    helpers: dict[str, SshPeer]
    conns: dict[str, asyncssh.SSHClientConnection]
    target: SshPeer

    def connection(self, gid: str) -> asyncssh.SSHClientConnection | None:
        return self.conns.get(gid)

    def probe_execs(self) -> int:
        return sum(n for cmd, n in self.fleet.counters.execs.items() if " probe " in cmd)

    def install_script(self, gid: str, text: str) -> None:
        path = self.helpers[gid].root / "bin" / "clawd"  # type: ignore[operator]
        path.unlink()
        path.write_text(text)
        path.chmod(0o755)


HELPERS = ("gw-h1", "gw-h2", "gw-h3")


@pytest.fixture
async def rig(tmp_path: Path, fleet: SshFleet, no_blocking: None) -> AsyncIterator[Rig]:
    helpers: dict[str, SshPeer] = {}
    for n, gid in enumerate(HELPERS):
        root = tmp_path / gid
        (root / "bin").mkdir(parents=True)
        (root / "bin" / "clawd").symlink_to(CLAWD)  # clawd installed in the helper's home
        helpers[gid] = await fleet.add_peer(f"127.0.24.{n + 2}", root=root)
    target = await fleet.add_peer("127.0.24.10")
    known_hosts = asyncssh.import_known_hosts(fleet.known_hosts_text())
    conns: dict[str, asyncssh.SSHClientConnection] = {}
    try:
        for gid, peer in helpers.items():
            conns[gid] = await asyncssh.connect(
                peer.address,
                peer.port,
                username="claw",
                known_hosts=known_hosts,
                client_keys=[fleet.client_key.key],
                agent_path=None,
                config=None,
            )
        yield Rig(fleet, helpers, conns, target)
    finally:
        for conn in conns.values():
            conn.close()
            await conn.wait_closed()


async def test_prober_target_up_is_reachable(rig: Rig) -> None:
    prober = IndirectProber(rig.connection, command=PROBE, timeout=2, k=2, rng=random.Random(7))
    with structlog.testing.capture_logs() as logs:
        verdict = await prober.probe("gw-t", rig.target.address, rig.target.port, HELPERS)

    assert verdict.target == "gw-t"
    assert len(verdict.asked) == 2 and set(verdict.asked) <= set(HELPERS)
    assert verdict.reachable_by == verdict.asked
    assert verdict.unreachable_by == () and dict(verdict.errors) == {}
    assert verdict.reachable and not verdict.confirmed_down
    line = probe_command_line(PROBE, rig.target.address, rig.target.port, 2)
    assert rig.fleet.counters.execs == {line: 2}
    assert [e["event"] for e in logs] == ["indirect_probe"]
    assert logs[0]["asked"] == 2 and logs[0]["reachable_by"] == 2 and logs[0]["target"] == "gw-t"


async def test_prober_target_down_is_confirmed(rig: Rig) -> None:
    await rig.target.stop()
    prober = IndirectProber(rig.connection, command=PROBE, timeout=2, k=3)
    verdict = await prober.probe("gw-t", rig.target.address, rig.target.port, HELPERS)
    assert verdict.asked == HELPERS and verdict.unreachable_by == HELPERS
    assert verdict.reachable_by == () and dict(verdict.errors) == {}
    assert verdict.confirmed_down and not verdict.reachable


async def test_helpers_that_cannot_run_the_probe_are_errors_not_votes(rig: Rig) -> None:
    (rig.helpers["gw-h3"].root / "bin" / "clawd").unlink()  # type: ignore[operator]
    rig.install_script("gw-h2", "#!/bin/sh\necho 'hello from a login script'\n")
    await rig.target.stop()
    prober = IndirectProber(rig.connection, command=HOME_PROBE, timeout=2, k=3)

    verdict = await prober.probe("gw-t", rig.target.address, rig.target.port, HELPERS)

    assert verdict.asked == HELPERS
    assert verdict.unreachable_by == ("gw-h1",) and verdict.reachable_by == ()
    assert set(verdict.errors) == {"gw-h2", "gw-h3"}
    assert verdict.errors["gw-h2"] == "probe output is not clawd probe's JSON"
    assert verdict.errors["gw-h3"].startswith("probe exited with status 127")
    assert "not found" in verdict.errors["gw-h3"]
    assert verdict.confirmed_down  # gw-h1 ran it and did not reach the target

    # live reload: a command that fails everywhere; nobody voted, so nothing is confirmed
    prober.configure(command="false", timeout=2, k=3)
    failed = await prober.probe("gw-t", rig.target.address, rig.target.port, HELPERS)
    assert set(failed.errors) == set(HELPERS)
    assert failed.unreachable_by == () == failed.reachable_by
    assert not failed.confirmed_down and not failed.reachable


async def test_prober_skips_unconnected_helpers_and_respects_k(rig: Rig) -> None:
    helpers = [*HELPERS, "gw-none", "gw-t", "gw-h1"]  # no link, the target itself, a repeat
    prober = IndirectProber(rig.connection, command=PROBE, timeout=2, k=5)
    wide = await prober.probe("gw-t", rig.target.address, rig.target.port, helpers)
    assert wide.asked == HELPERS and wide.reachable_by == HELPERS

    prober.configure(command=PROBE, timeout=2, k=1)
    asked: list[str] = []
    for _ in range(2):
        one = await prober.probe("gw-t", rig.target.address, rig.target.port, helpers)
        assert len(one.asked) == 1 and one.asked == one.reachable_by
        asked.extend(one.asked)
    assert set(asked) <= set(HELPERS)

    prober.configure(command=PROBE, timeout=2, k=0)  # probes off
    none = await prober.probe("gw-t", rig.target.address, rig.target.port, helpers)
    assert none == ProbeVerdict("gw-t", (), (), (), {})
    assert not none.reachable and not none.confirmed_down
    assert rig.probe_execs() == 3 + 2

    nobody = IndirectProber(lambda gid: None, command=PROBE, k=3)
    alone = await nobody.probe("gw-t", rig.target.address, rig.target.port, helpers)
    assert alone.asked == () and not alone.confirmed_down


async def test_concurrent_probes_of_one_target_share_one_round(rig: Rig) -> None:
    prober = IndirectProber(rig.connection, command=PROBE, timeout=2, k=2)
    args = ("gw-t", rig.target.address, rig.target.port, HELPERS)
    verdicts = await asyncio.gather(*(prober.probe(*args) for _ in range(5)))
    assert all(v is verdicts[0] for v in verdicts)
    assert verdicts[0].reachable and rig.probe_execs() == 2

    prober.configure(command=PROBE, timeout=2, k=1)
    again = await prober.probe(*args)  # the round is over: a new one starts
    assert again is not verdicts[0] and rig.probe_execs() == 3

    # a waiter cancelled does not cancel the round the others wait for
    first = asyncio.create_task(prober.probe(*args))
    second = asyncio.create_task(prober.probe(*args))
    await asyncio.sleep(0.05)
    first.cancel()
    verdict = await second
    assert verdict.reachable and first.cancelled() and rig.probe_execs() == 4


async def test_hung_helper_and_lost_connection_are_bounded_errors(rig: Rig) -> None:
    for gid in ("gw-h1", "gw-h2"):
        rig.install_script(gid, "#!/bin/sh\nexec sleep 2\n")
    prober = IndirectProber(rig.connection, command=HOME_PROBE, timeout=0.3, k=3, margin=1.2)

    async def drop_h2() -> None:  # gw-h2 goes away while its probe runs
        await asyncio.sleep(0.3)
        await rig.helpers["gw-h2"].drop_connections()

    start = time.monotonic()
    verdict, _ = await asyncio.gather(
        prober.probe("gw-t", rig.target.address, rig.target.port, HELPERS), drop_h2()
    )
    took = time.monotonic() - start

    assert took < 1.5 + 0.7  # the limit (gw-h3 needs Python's start-up within it)
    assert verdict.reachable_by == ("gw-h3",)
    assert verdict.errors["gw-h1"] == "no answer within 1.5s"
    assert verdict.errors["gw-h2"] == "connection lost"
    # a connection already closed (the prober is still handed it): refused at once
    closed = IndirectProber(rig.connection, command=PROBE, timeout=0.4, k=3)
    again = await closed.probe("gw-t", rig.target.address, rig.target.port, ["gw-h2"])
    assert again.errors["gw-h2"] == "channel refused: SSH connection closed"
    assert verdict.reachable and not verdict.confirmed_down
    # The borrowed connection stays open and usable after its channel was given up on.
    assert (await rig.conns["gw-h1"].run("true", timeout=5)).exit_status == 0
    await asyncio.sleep(max(0.0, 2.1 - (time.monotonic() - start)))  # the helper's sleep ends
