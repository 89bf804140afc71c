"""Issue 12 items 3, 4, 16, 18: the log's reader goes away, status without a daemon, logfmt
values that cannot forge fields, CLI output cut by a pipe."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonproc import START_TIMEOUT, DaemonProcess, run_cli
from pgserver import PgDatabase

STOP_WITHIN = 5.0
FAILURE_FILE = "log-output-failed.log"  # in the home, when not under journald


def _config(home: Path, **extra: object) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    data = {
        "instance": {"gatewayId": "gw-a", "name": "alpha", "sshUser": "claw", "leadNumber": 1},
        "discovery": {"enabled": False},
    } | extra
    path = home / "config.json"
    path.write_text(json.dumps(data))
    return path


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, CLAW_HOME=str(home), **extra)
    if "JOURNAL_STREAM" not in extra:
        env.pop("JOURNAL_STREAM", None)
    return env


def _wait_for(check: object, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def _stop_in_time(proc: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=STOP_WITHIN + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{sig.name} ignored: clawd still running after 15 s") from None
    took = time.monotonic() - started
    assert took < STOP_WITHIN, f"stopping took {took:.1f}s"
    return code


def _still_answers(home: Path) -> None:
    """A log line is written (and fails) by the reload; the daemon still answers."""
    reload = run_cli(home, "reload")
    assert reload.returncode == 0, reload.stderr
    # The start-up election may still be settling (item 11): bounded wait for its leader.
    deadline = time.monotonic() + 20
    while True:
        status = run_cli(home, "status", "--live", "--json")
        assert status.returncode == 0, status.stderr
        if json.loads(status.stdout)["leader"] == "gw-a" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert json.loads(status.stdout)["leader"] == "gw-a"


def _failure_lines(home: Path) -> list[str]:
    path = home / FAILURE_FILE
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stops_after_the_log_pipe_is_closed(tmp_path: Path, sig: signal.Signals) -> None:
    """Issue 12 item 3: the stderr pipe's reader closes it (`| cat` ended); clawd keeps
    answering, reports the failure once in its home, and a signal stops it (exit 0, < 5 s)."""
    home = tmp_path / "home"
    _config(home)
    with DaemonProcess(home) as daemon:
        daemon.wait_log("event=ready")
        assert daemon.proc.stderr is not None
        daemon.proc.stderr.close()
        _still_answers(home)
        assert _stop_in_time(daemon.proc, sig) == 0
    lines = _failure_lines(home)
    assert len(lines) == 1, lines  # reported once, though every later line failed
    assert "event=log_output_failed" in lines[0] and "Broken pipe" in lines[0]
    assert (home / FAILURE_FILE).stat().st_mode & 0o777 == 0o600


def test_stops_after_the_log_reader_is_killed(tmp_path: Path) -> None:
    """Issue 12 item 3: `clawd run 2>&1 | tee log`, tee killed (Ctrl-C reaches it first):
    SIGTERM still stops clawd, exit 0 within 5 s; the daemon kept working meanwhile."""
    home = tmp_path / "home"
    _config(home)
    log = tmp_path / "tee.log"
    tee = subprocess.Popen(["tee", str(log)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert tee.stdin is not None
    daemon = subprocess.Popen(
        [sys.executable, "-m", "clawd.cli.main", "run"],
        env=_env(home),
        stdout=tee.stdin,
        stderr=tee.stdin,
    )
    tee.stdin.close()
    try:
        _wait_for(lambda: log.exists() and "event=ready" in log.read_text(), "ready in tee")
        tee.kill()
        tee.wait(timeout=10)
        _still_answers(home)
        assert _stop_in_time(daemon, signal.SIGTERM) == 0
    finally:
        for proc in (daemon, tee):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(_failure_lines(home)) == 1


def test_disk_full_log_is_dropped_and_reported_once(tmp_path: Path) -> None:
    """Issue 12 item 3: stderr on a full disk (/dev/full: ENOSPC at every write): clawd
    starts, answers, reports the failure once, and SIGTERM stops it with exit 0."""
    home = tmp_path / "home"
    _config(home)
    with Path("/dev/full").open("wb") as full:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "clawd.cli.main", "run"],
            env=_env(home),
            stdout=full,
            stderr=full,
        )
    try:
        _wait_for(lambda: run_cli(home, "status", "--live").returncode == 0, "clawd answering")
        _still_answers(home)
        assert _stop_in_time(daemon, signal.SIGTERM) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    lines = _failure_lines(home)
    assert len(lines) == 1 and "No space left on device" in lines[0], lines


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    yield sock, path
    sock.close()


def _datagrams(sock: socket.socket) -> list[dict[str, str]]:
    """Every entry sent so far (simple `KEY=value` lines; no value here holds a newline)."""
    entries = []
    for _ in range(1000):
        try:
            data = sock.recv(65536).decode()
        except TimeoutError:
            break
        entries.append(dict(ln.split("=", 1) for ln in data.splitlines() if "=" in ln))
    return entries


def test_journal_stream_lost_is_reported_to_the_journal_socket(
    tmp_path: Path, journal_socket: tuple[socket.socket, str]
) -> None:
    """Issue 12 item 3: under journald (JOURNAL_STREAM), the stream's end closes (journald
    restarted); the failure is one native journal entry, and SIGTERM still stops clawd."""
    sock, sock_path = journal_socket
    home = tmp_path / "home"
    _config(home)
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "clawd.cli.main", "run"],
        env=_env(
            home,
            JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
            CLAW_JOURNAL_SOCKET=sock_path,
        ),
        stdout=subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    try:
        seen = b""
        deadline = time.monotonic() + START_TIMEOUT
        while b"event=ready" not in seen and time.monotonic() < deadline:
            seen += os.read(read_end, 65536)
        assert b"<6>level=info event=ready" in seen, seen
        os.close(read_end)
        _still_answers(home)
        assert _stop_in_time(daemon, signal.SIGTERM) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    failed = [e for e in _datagrams(sock) if e.get("CLAW_EVENT") == "log_output_failed"]
    assert len(failed) == 1, failed
    assert failed[0]["PRIORITY"] == "3" and failed[0]["SYSLOG_IDENTIFIER"] == "clawd"
    assert "event=log_output_failed" in failed[0]["MESSAGE"]
    assert not (home / FAILURE_FILE).exists()  # the journal had it: not twice


# -- item 16: logfmt values ------------------------------------------------------------

_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
FORGER = "x event=offline gateway=gw-b"


def parse_logfmt(text: str) -> list[tuple[str, str]]:
    """The logfmt grammar: `key=bare` or `key="quoted"` with backslash escapes."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        eq = text.index("=", i)
        key, i = text[i:eq], eq + 1
        assert " " not in key and '"' not in key, f"bad key {key!r} in {text!r}"
        if i < len(text) and text[i] == '"':
            value, i = [], i + 1
            while text[i] != '"':
                if text[i] == "\\":
                    esc = text[i + 1]
                    if esc in "xuU":
                        width = {"x": 2, "u": 4, "U": 8}[esc]
                        value.append(chr(int(text[i + 2 : i + 2 + width], 16)))
                        i += 2 + width
                        continue
                    value.append(_UNESCAPE[esc])
                    i += 2
                else:
                    value.append(text[i])
                    i += 1
            pairs.append((key, "".join(value)))
            i += 1
            assert i == len(text) or text[i] == " ", f"junk after a quoted value in {text!r}"
        else:
            end = text.find(" ", i)
            end = len(text) if end < 0 else end
            pairs.append((key, text[i:end]))
            i = end
    return pairs


def test_hostile_values_parse_back_through_the_log_renderer() -> None:
    """Issue 12 item 16: values with spaces, `=`, quotes, backslashes, newlines and control
    characters render as one logfmt value each, which parses back to the original."""
    import io

    import structlog

    from clawd.core.logs import configure_logging

    fields = {
        "gateway": "gw-b",
        "name": FORGER,
        "quoted": 'say "hi" \\"',
        "path": "C:\\dir\\x41",
        "lines": "a\nevent=online",
        "controls": "tab\there\r\x1b[2J\x7f",
        "empty": "",
        "plain": "gw-c",
    }
    out = io.StringIO()
    configure_logging("info", out)
    structlog.get_logger("t").warning("offline", **fields)
    text = out.getvalue()
    assert text.count("\n") == 1 and "\x1b" not in text and "\r" not in text and "\t" not in text
    pairs = parse_logfmt(text.rstrip("\n"))
    assert [k for k, _ in pairs].count("event") == 1
    parsed = dict(pairs)
    assert parsed.pop("ts") and parsed.pop("level") == "warning"
    assert parsed == {"event": "offline", **fields}
    assert "plain=gw-c" in text and "gateway=gw-b" in text  # plain values stay bare


async def test_incident_journal_line_cannot_forge_fields(
    tmp_path: Path, journal_socket: tuple[socket.socket, str]
) -> None:
    """Issue 12 item 16: the incident's MESSAGE in the journal quotes a peer named
    `x event=offline gateway=gw-b`: it parses back with exactly one `event=`."""
    from clawd.core.journal import JournalSender
    from clawd.core.model import EventType, Incident, Instance
    from clawd.keep.incidents import IncidentRecorder
    from clawd.keep.store.json_store import JsonStore
    from clawd.keep.store.repository import FleetRepository

    sock, path = journal_socket
    repo = FleetRepository(JsonStore(tmp_path), Instance("gw-a", "alpha"))
    await repo.open()
    sender = JournalSender(path)
    try:
        name = f'{FORGER} note="a b"'
        await IncidentRecorder(repo, sender).record(
            Incident("gw-c", EventType.ONLINE, {"name": name, "missed_pings": 0})
        )
    finally:
        sender.close()
    (entry,) = _datagrams(sock)
    pairs = parse_logfmt(entry["MESSAGE"])
    assert [k for k, _ in pairs].count("event") == 1
    assert [k for k, _ in pairs].count("gateway") == 1
    assert dict(pairs) == {
        "event": "online",
        "gateway": "gw-c",
        "name": name,
        "missed_pings": "0",
    }


# -- item 18: output cut by a pipe -----------------------------------------------------

N_PEERS = 1500  # report rows: ~150 kB of CSV, more than a pipe holds (64 kB)
N_INCIDENTS = 3000  # ~700 kB of JSON
T0 = "2024-05-01T00:00:00Z"
WINDOW = ["--from", T0, "--to", "2024-05-01T01:00:00Z"]


@pytest.fixture
def big_history(pg_db: PgDatabase, tmp_path: Path) -> Path:
    """A real PostgreSQL store holding more history than a pipe buffers."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from helpers_pg import connect, settings_data

    from clawd.keep.store.migrations import migrate

    start = datetime(2024, 5, 1, tzinfo=UTC)
    gateways = [f"gw-{n:05d}" for n in range(N_PEERS)]

    async def fill() -> None:
        async with connect(pg_db) as conn:
            await migrate(conn)
            await conn.executemany(
                "INSERT INTO fleet_instances (gateway_id, name) VALUES ($1, $2)",
                [(g, f"name of {g}") for g in gateways],
            )
            await conn.executemany(
                'INSERT INTO ping_history (source_gateway, target_gateway, success, "timestamp",'
                " response_ms) VALUES ('gw-self', $1, $2, $3, $4)",
                [(g, True, start + timedelta(seconds=s), 5) for g in gateways for s in (10, 20)],
            )
            await conn.executemany(
                'INSERT INTO incident_log (gateway_id, event_type, details, "timestamp")'
                " VALUES ($1, 'offline', $2::jsonb, $3)",
                [
                    (gateways[n % N_PEERS], json.dumps({"missedPings": n}), start)
                    for n in range(N_INCIDENTS)
                ],
            )

    asyncio.run(fill())
    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings_data(pg_db, tmp_path / "home")))
    return config


@pytest.mark.parametrize(
    "command",
    [
        ["report", *WINDOW, "--csv"],
        ["report", *WINDOW, "--json"],
        ["incidents", *WINDOW, "--json", "--limit", str(N_INCIDENTS)],
        ["incidents", *WINDOW, "--limit", str(N_INCIDENTS)],
    ],
    ids=["report-csv", "report-json", "incidents-json", "incidents-table"],
)
def test_output_cut_by_a_pipe_exits_quietly(big_history: Path, command: list[str]) -> None:
    """Issue 12 item 18: `clawd report --csv | head -1`: the reader takes one line and
    closes the pipe; clawd exits quietly (0 or 141, as tools ended by SIGPIPE), no
    traceback, no "Exception ignored"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawd.cli.main", *command, "--config", str(big_history)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert first, err  # the command produced output before the cut
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err == ""
    assert code in (0, 141)


# -- item 4: status without a daemon ---------------------------------------------------

INTERVAL = 0.3


async def test_status_is_live_while_the_daemon_runs_then_says_not_running(
    tmp_path: Path,
) -> None:
    """Issue 12 item 4: with a daemon, `clawd status` is its live view (LAST SEEN within
    seconds, though the files are written once a minute); after SIGKILL, the first line says
    clawd is not running and how old the files are, and the exit code is 3."""
    import asyncio
    from datetime import datetime

    from sshpeers import SshFleet

    keys = tmp_path / "keys"
    keys.mkdir()
    home = tmp_path / "home"
    async with SshFleet(keys) as ssh_fleet:
        peer = await ssh_fleet.add_peer("127.0.0.2")
        (keys / "known_hosts").write_text(ssh_fleet.known_hosts_text())
        _config(
            home,
            peers=[
                {
                    "name": "beta",
                    "gatewayId": "gw-b",
                    "ip": peer.address,
                    "sshPort": peer.port,
                    "sshUser": "claw",
                }
            ],
            ping={"intervalSeconds": INTERVAL, "timeoutSeconds": 0.25, "offlineAfterMissed": 5},
            ssh={
                "knownHosts": str(keys / "known_hosts"),
                "clientKeys": [str(ssh_fleet.client_key.path)],
                "connectTimeoutSeconds": 2,
                "reconnectInitialSeconds": 0.2,
                "reconnectMaxSeconds": 0.5,
            },
        )
        with DaemonProcess(home) as daemon:
            await daemon.await_log("event=ready")
            await daemon.wait_incident("gw-b", "online", 20)
            # Long enough that the files' lastSeen (written at the status change, then
            # once a minute) is clearly older than the live one (every 0.3 s ping).
            await asyncio.sleep(8)
            asked = time.time()
            live = await asyncio.to_thread(run_cli, home, "status", "--json")
            assert live.returncode == 0, live.stderr
            doc = json.loads(live.stdout)
            assert doc["live"] is True and doc["ageSeconds"] == 0
            (beta,) = doc["peers"]
            assert beta["status"] == "online"
            seen_age = asked - datetime.fromisoformat(beta["lastSeen"]).timestamp()
            assert seen_age < 4, f"lastSeen {seen_age:.1f}s old: not the live view"
            table = await asyncio.to_thread(run_cli, home, "status")
            assert table.returncode == 0, table.stderr
            assert table.stdout.splitlines()[0].startswith("NAME")

            assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        dead = await asyncio.to_thread(run_cli, home, "status")
        sock = home / "clawd.sock"
        assert dead.returncode == 3, dead.stderr
        first, *rest = dead.stdout.splitlines()
        assert first.startswith(f"clawd is not running (no answer on {sock}); ")
        assert "showing the files as of " in first and first.endswith(" ago")
        assert rest[0].startswith("NAME") and any(ln.startswith("beta") for ln in rest)
        as_json = await asyncio.to_thread(run_cli, home, "status", "--json")
        assert as_json.returncode == 3
        doc = json.loads(as_json.stdout)
        assert doc["live"] is False and doc["running"] is False
        assert 0 <= doc["ageSeconds"] < 120 and doc["asOf"]
        assert [p["gatewayId"] for p in doc["peers"]] == ["gw-b"]
        only_live = await asyncio.to_thread(run_cli, home, "status", "--live")
        assert only_live.returncode == 3 and only_live.stdout == ""
        assert only_live.stderr.startswith("error: no running clawd answers on ")
