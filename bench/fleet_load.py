"""The daemon under a fleet's load: 1,000 SSH peers at a 10 s ping interval, measured from outside.

A separate process (``tests/sshpeers.py serve``) runs one asyncssh server per loopback address
(127.1.x.y); the real daemon (``python -m clawd.cli.main run``) runs as a subprocess with a
throwaway ``CLAW_HOME`` whose config.json lists every peer statically (JSON backend, discovery
off, ping interval 10 s, default thresholds). Nothing is imported from clawd: everything is read
from ``/proc``, ``<home>/incidents.jsonl``, the daemon's log and ``clawd status --live --json``.

Phases:

* **connect** -- from spawning the daemon until every peer has its ``online`` incident (the
  first successful echo after its handshake and first install check). Time and daemon CPU
  seconds (including interpreter start-up) are reported separately.
* **steady state** -- ``window`` seconds after that. CPU % of one core from ``/proc/PID/stat``
  utime+stime deltas (all threads), RSS (``VmRSS``) sampled every second, ``VmHWM`` at the end.
  Loop lag p50/p99/max and the pinger's counters come from the daemon's ``status`` answer (what
  ``clawd status --live --json`` prints), asked on the control socket once when connected and
  once at the end of the window (not during it: answering costs the daemon CPU). The CLI itself
  is run once after the window, and whether it copes with the fleet's size is reported. The
  daemon keeps its last ~5 minutes of lag samples, so with a window shorter than that
  (``--quick``) the lag figures also cover part of the connect phase.
* **stop** -- SIGTERM, time until exit and exit code.

Healthy peers marked offline = ``offline`` incidents in ``incidents.jsonl`` over the whole run
(no peer is ever stopped here). The server process's CPU is shown for information.

Run: ``.venv/bin/python -m bench.fleet_load [--quick] [--peers N] [--seconds S]``;
``--profile`` also records the daemon with py-spy during the window (``PY_SPY`` or ``py-spy``
on PATH; ``pip install --target /tmp/pyspy py-spy`` gives ``/tmp/pyspy/bin/py-spy``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR = REPO / "tests"
SECTION = "fleet-load"
Row = tuple[str, str, str, str]

INTERVAL_S = 10.0
GOAL_CPU_PERCENT = 5.0
GOAL_RSS_MIB = 120.0
GOAL_LAG_P99_MS = 50.0
GOAL_SHUTDOWN_S = 5.0
KEEPALIVE_FLOOR = "0.12–0.18"  # MACHINE-NOTES: client CPU s per 1,000 keepalives

SERVER_START_TIMEOUT_S = 180.0
CONNECT_TIMEOUT_S = 240.0
SETTLE_S = 2.0  # after the last peer came online, before the window starts
SAMPLE_S = 1.0
STOP_WAIT_S = 15.0  # SIGTERM -> exit; then SIGKILL
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Plan:
    peers: int
    window_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        # --quick is a smoke run (the whole `make bench --quick` must stay under 2 minutes).
        return cls(peers=300, window_s=20.0) if quick else cls(peers=1000, window_s=240.0)


def peer_addresses(n: int) -> list[str]:
    """127.1.0.1, 127.1.0.2, ... (250 per /24): apart from the tests' 127.0.x.y."""
    return [f"127.1.{i // 250}.{1 + i % 250}" for i in range(n)]


def venv_python() -> str:
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """Thread id -> (user s, system s) for every thread of `pid`."""
    out: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(task.name)] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


def cpu_split(
    pid: int, before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> tuple[float, float, float, float]:
    """(main thread user, main sys, other threads user, other sys) seconds between snapshots."""
    split = [0.0, 0.0, 0.0, 0.0]
    for tid, (user, system) in after.items():
        user0, system0 = before.get(tid, (0.0, 0.0))
        base = 0 if tid == pid else 2
        split[base] += user - user0
        split[base + 1] += system - system0
    return split[0], split[1], split[2], split[3]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, Threads from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM", "Threads"}:
            out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return -1


@dataclass
class Samples:
    """(monotonic time, daemon CPU s, daemon RSS KiB) every SAMPLE_S."""

    points: list[tuple[float, float, int]] = field(default_factory=list)

    def take(self, pid: int) -> None:
        self.points.append((time.monotonic(), cpu_seconds(pid), memory_kib(pid)["VmRSS"]))

    def worst_cpu_percent(self, span_s: float = 10.0) -> float:
        """Highest CPU % of one core over any `span_s` stretch of the samples."""
        worst = 0.0
        j = 0
        for i, (t, cpu, _) in enumerate(self.points):
            while self.points[j][0] < t - span_s:
                j += 1
            if j < i and t - self.points[j][0] >= span_s * 0.9:
                t0, cpu0, _ = self.points[j]
                worst = max(worst, 100.0 * (cpu - cpu0) / (t - t0))
        return worst


# --------------------------------------------------------------------------- processes


def _stop(proc: subprocess.Popen[Any] | None, wait_s: float) -> tuple[float | None, int | None]:
    """SIGTERM, wait (bounded), SIGKILL. (seconds until exit, exit code); None if killed."""
    if proc is None:
        return None, None
    if proc.poll() is not None:
        return 0.0, proc.returncode
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None, None
    return time.monotonic() - started, code


def start_server(directory: Path, addresses: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [
                venv_python(),
                str(TESTS_DIR / "sshpeers.py"),
                "serve",
                "--dir",
                str(directory),
                # Real peers have SFTP and a shell: the leader's fenced config push
                # (a claim script, then SFTP) succeeds once.
                "--homes",
                *addresses,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )


def read_ports(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    """The server's one line `addr:port ...` (waits at most `timeout`)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"SSH peer server printed no ports within {timeout:g}s")
    line = proc.stdout.readline().decode()
    if not line.strip():
        raise RuntimeError(f"SSH peer server exited (code {proc.poll()}) before listening")
    return {a: int(p) for a, p in (item.rsplit(":", 1) for item in line.split())}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(
    home: Path, keys: Path, ports: dict[str, int], override: dict[str, Any] | None = None
) -> None:
    config: dict[str, Any] = {
        "backend": "json",
        "instance": {"gatewayId": "bench-self", "name": "bench-self", "sshUser": "claw"},
        "peers": [
            {
                "name": f"peer-{i:04d}",
                "gatewayId": f"peer-{i:04d}",
                "ip": address,
                "sshPort": port,
                "sshUser": "claw",
            }
            for i, (address, port) in enumerate(ports.items())
        ],
        "ping": {"intervalSeconds": INTERVAL_S},
        "ssh": {
            "knownHosts": str(keys / "known_hosts"),
            "clientKeys": [str(keys / "id_ed25519")],
        },
        "discovery": {"enabled": False},
    }
    if override:
        config = _merge(config, override)
    home.mkdir(mode=0o700)
    (home / "config.json").write_text(json.dumps(config, indent=1))


def daemon_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, CLAW_HOME=str(home))
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(var, None)  # not under systemd here, whatever our own environment says
    return env


def start_daemon(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [venv_python(), "-m", "clawd.cli.main", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=daemon_env(home),
            cwd=REPO,
        )


def live_status(home: Path) -> tuple[dict[str, Any], float]:
    """The daemon's `status` answer over its control socket, and the wall time it took.

    Same request as `clawd status --live --json`, read without a line-length limit: the CLI's
    reader stops at 64 KiB (see `cli_status`).
    """
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(home / "clawd.sock"))
        sock.sendall(b'{"cmd": "status"}\n')
        chunks: list[bytes] = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    took = time.monotonic() - started
    answer: dict[str, Any] = json.loads(b"".join(chunks))
    if not answer.get("ok"):
        raise RuntimeError(f"status request refused: {answer}")
    return answer, took


def cli_status(home: Path) -> tuple[bool, str, float]:
    """Run `clawd status --live --json` itself: (worked, what it said if not, wall s)."""
    started = time.monotonic()
    done = subprocess.run(
        [venv_python(), "-m", "clawd.cli.main", "status", "--live", "--json"],
        env=daemon_env(home),
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    if done.returncode == 0:
        try:
            json.loads(done.stdout)
        except ValueError:
            return False, "output is not JSON", took
        return True, "", took
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return False, f"exit {done.returncode}: {lines[-1] if lines else '(no output)'}", took


class IncidentTail:
    """Reads `<home>/incidents.jsonl` as it grows (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: Counter[str] = Counter()
        self.online: set[str] = set()
        self.offline: list[str] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            event, gateway = row["eventType"], row["gatewayId"]
            self.events[event] += 1
            if event == "online":
                self.online.add(gateway)
            elif event == "offline":
                self.offline.append(gateway)


_EVENT = re.compile(r'\bevent=(?:"([^"]*)"|(\S+))')
_LEVEL = re.compile(r"\blevel=(\w+)")


def log_events(path: Path) -> tuple[Counter[str], Counter[str]]:
    """(events by name, lines by level) of the daemon's logfmt log."""
    events: Counter[str] = Counter()
    levels: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        m = _EVENT.search(line)
        if m:
            events[m.group(1) or m.group(2)] += 1
            lm = _LEVEL.search(line)
            levels[lm.group(1) if lm else "?"] += 1
        elif line.strip():
            levels["other (not logfmt)"] += 1
    return events, levels


def py_spy() -> str | None:
    found = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if found is None and Path("/tmp/pyspy/bin/py-spy").exists():
        found = "/tmp/pyspy/bin/py-spy"
    return found


# --------------------------------------------------------------------------- the run


@dataclass
class Result:
    peers: int
    window_s: float
    server_start_s: float = 0.0
    ready_s: float | None = None
    connect_s: float | None = None
    connect_cpu_s: float = 0.0
    connected: int = 0
    cpu_percent: float = 0.0
    worst_10s_cpu_percent: float = 0.0
    cpu_split: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    window_cpu_s: float = 0.0
    window_wall_s: float = 0.0
    rss_max_mib: float = 0.0
    rss_end_mib: float = 0.0
    hwm_mib: float = 0.0
    threads: int = 0
    fds: int = 0
    lag: dict[str, float] = field(default_factory=dict)
    lag_at_connect: dict[str, float] = field(default_factory=dict)
    pinger_start: dict[str, int] = field(default_factory=dict)
    pinger_end: dict[str, int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    incidents: Counter[str] = field(default_factory=Counter)
    offline_gateways: list[str] = field(default_factory=list)
    log_events: Counter[str] = field(default_factory=Counter)
    log_levels: Counter[str] = field(default_factory=Counter)
    status_call_s: float = 0.0
    status_call_cpu_s: float = 0.0
    cli_ok: bool = False
    cli_error: str = ""
    cli_s: float = 0.0
    shutdown_s: float | None = None
    exit_code: int | None = None
    server_cpu_percent: float = 0.0
    profile: str | None = None
    total_s: float = 0.0
    override: dict[str, Any] = field(default_factory=dict)

    @property
    def window_pings(self) -> int:
        return self.pinger_end.get("pings_sent", 0) - self.pinger_start.get("pings_sent", 0)

    @property
    def window_failed(self) -> int:
        return self.pinger_end.get("pings_failed", 0) - self.pinger_start.get("pings_failed", 0)


def _progress(message: str) -> None:
    print(f"[fleet-load] {message}", file=sys.stderr, flush=True)


def measure(
    plan: Plan, work: Path, profile: bool = False, override: dict[str, Any] | None = None
) -> Result:
    result = Result(plan.peers, plan.window_s, override=override or {})
    began = time.monotonic()
    limit = raise_fd_limit()
    if limit < 2 * plan.peers + 200:
        raise RuntimeError(f"RLIMIT_NOFILE {limit} is too low for {plan.peers} peers")
    keys, home = work / "keys", work / "home"
    keys.mkdir()
    server: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.monotonic()
        server = start_server(keys, peer_addresses(plan.peers), work / "server.log")
        ports = read_ports(server, SERVER_START_TIMEOUT_S)
        result.server_start_s = time.monotonic() - t0
        _progress(f"{len(ports)} SSH peers listening ({result.server_start_s:.1f}s)")
        write_config(home, keys, ports, override)

        daemon_log = work / "daemon.log"
        t0 = time.monotonic()
        daemon = start_daemon(home, daemon_log)
        _progress(f"clawd run: pid {daemon.pid}, home {home}")
        tail = IncidentTail(home / "incidents.jsonl")
        while len(tail.online) < plan.peers:
            if daemon.poll() is not None:
                raise RuntimeError(
                    f"clawd exited with {daemon.returncode}:\n{daemon_log.read_text()[-3000:]}"
                )
            if time.monotonic() - t0 > CONNECT_TIMEOUT_S:
                raise RuntimeError(
                    f"only {len(tail.online)}/{plan.peers} peers online "
                    f"after {CONNECT_TIMEOUT_S:g}s"
                )
            if result.ready_s is None and "event=ready" in daemon_log.read_text(errors="replace"):
                result.ready_s = time.monotonic() - t0
            time.sleep(0.1)
            tail.poll()
        result.connect_s = time.monotonic() - t0
        result.connect_cpu_s = cpu_seconds(daemon.pid)
        _progress(
            f"all {plan.peers} peers online after {result.connect_s:.1f}s "
            f"({result.connect_cpu_s:.1f} CPU-s)"
        )
        time.sleep(SETTLE_S)
        status, _ = live_status(home)
        result.pinger_start = status["pinger"]
        result.lag_at_connect = status["loopLagMs"]
        result.connected = status["pinger"]["connected"]

        if profile and (spy_bin := py_spy()) is not None:
            result.profile = str(work / "daemon.pyspy.txt")
            spy = subprocess.Popen(
                [
                    spy_bin,
                    "record",
                    "--nonblocking",  # never pauses the daemon
                    "--gil",  # only what holds the GIL: CPU, not waiting
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "-d",
                    str(int(plan.window_s)),
                    "-o",
                    result.profile,
                    "-p",
                    str(daemon.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        samples = Samples()
        threads0 = thread_times(daemon.pid)
        samples.take(daemon.pid)
        server_cpu0 = cpu_seconds(server.pid)
        t_start, cpu_start = samples.points[0][0], samples.points[0][1]
        _progress(f"steady state: measuring {plan.window_s:g}s")
        while time.monotonic() - t_start < plan.window_s:
            time.sleep(min(SAMPLE_S, max(0.0, t_start + plan.window_s - time.monotonic())))
            if daemon.poll() is not None:
                raise RuntimeError(f"clawd exited with {daemon.returncode} during the window")
            samples.take(daemon.pid)
        t_end, cpu_end, rss_end = samples.points[-1]
        result.cpu_split = cpu_split(daemon.pid, threads0, thread_times(daemon.pid))
        (work / "daemon_samples.csv").write_text(
            "seconds,cpu_s,rss_kib\n"
            + "".join(f"{t - t_start:.2f},{c:.2f},{m}\n" for t, c, m in samples.points)
        )
        server_cpu = cpu_seconds(server.pid) - server_cpu0
        mem = memory_kib(daemon.pid)
        result.window_wall_s = t_end - t_start
        result.window_cpu_s = cpu_end - cpu_start
        result.cpu_percent = 100.0 * result.window_cpu_s / result.window_wall_s
        result.worst_10s_cpu_percent = samples.worst_cpu_percent()
        result.server_cpu_percent = 100.0 * server_cpu / result.window_wall_s
        result.rss_max_mib = max(p[2] for p in samples.points) / 1024
        result.rss_end_mib = rss_end / 1024
        result.hwm_mib = mem["VmHWM"] / 1024
        result.threads = mem["Threads"]
        result.fds = open_fds(daemon.pid)

        cpu_before = cpu_seconds(daemon.pid)
        status, result.status_call_s = live_status(home)
        result.status_call_cpu_s = cpu_seconds(daemon.pid) - cpu_before
        result.pinger_end = status["pinger"]
        result.lag = status["loopLagMs"]
        result.statuses = Counter(row["status"] for row in status["peers"])
        result.cli_ok, result.cli_error, result.cli_s = cli_status(home)
        tail.poll()
        result.incidents = tail.events
        result.offline_gateways = tail.offline
        _progress(
            f"CPU {result.cpu_percent:.2f}% RSS max {result.rss_max_mib:.1f} MiB "
            f"lag {result.lag} pinger {result.pinger_end}"
        )

        result.shutdown_s, result.exit_code = _stop(daemon, STOP_WAIT_S)
        daemon = None
        tail.poll()
        result.incidents = tail.events
        result.offline_gateways = tail.offline
        result.log_events, result.log_levels = log_events(daemon_log)
        if spy is not None:
            spy.wait(timeout=30)
            spy = None
    finally:
        for proc in (spy, daemon):
            _stop(proc, STOP_WAIT_S)
        _stop(server, 30.0)
    result.total_s = time.monotonic() - began
    return result


# --------------------------------------------------------------------------- report


def _ratio(measured: float | None, goal: float) -> str:
    if measured is None:
        return "✗"
    value = measured / goal
    return f"{value:.2f} {'✓' if value <= 1.0 else '✗'}"


def _zero(count: int) -> str:
    return "✓" if count == 0 else "✗"


def rows(r: Result) -> list[Row]:
    pings, failed = r.window_pings, r.window_failed
    total_sent, total_failed = (
        r.pinger_end.get("pings_sent", 0),
        r.pinger_end.get("pings_failed", 0),
    )
    not_online = r.peers - r.statuses.get("online", 0)
    offline = r.incidents.get("offline", 0)
    per_1000 = r.window_cpu_s * 1000.0 / max(1, pings)
    expected = r.peers * r.window_wall_s / INTERVAL_S
    lag = r.lag or {}
    warnings = sum(n for level, n in r.log_levels.items() if level in {"warning", "error"})
    noisy = ", ".join(
        f"{name} {n}"
        for name, n in r.log_events.most_common()
        if name not in {"ssh_connected", "ready", "pinger_started", "stop_requested", "stopped"}
        and name not in {"pinger_stopped", "online"}
    )
    shutdown = f"{r.shutdown_s:.2f}" if r.shutdown_s is not None else "killed"
    return [
        (
            "fleet",
            "—",
            f"{r.peers:,} asyncssh peers (own process) on 127.1.x.y, ping every "
            f"{INTERVAL_S:g} s, {r.window_wall_s:.0f} s steady-state window",
            "—",
        ),
        (
            "connect phase: spawn → every peer `online`, s (daemon `ready` at)",
            "—",
            f"{r.connect_s:.1f} ({r.ready_s:.1f})"
            if r.connect_s is not None and r.ready_s is not None
            else "—",
            "—",
        ),
        (
            "connect phase: daemon CPU s (incl. interpreter start-up)",
            "—",
            f"{r.connect_cpu_s:.1f}",
            "—",
        ),
        (
            "steady state: daemon CPU % of one core",
            f"≤ {GOAL_CPU_PERCENT:g}",
            f"{r.cpu_percent:.2f}",
            _ratio(r.cpu_percent, GOAL_CPU_PERCENT),
        ),
        (
            "steady state: CPU % split, event-loop thread user / sys; other threads "
            "(`to_thread` workers) user / sys",
            "—",
            " / ".join(f"{100 * x / max(r.window_wall_s, 1e-9):.2f}" for x in r.cpu_split),
            "—",
        ),
        (
            "steady state: worst 10 s stretch, CPU % of one core",
            "—",
            f"{r.worst_10s_cpu_percent:.2f}",
            "—",
        ),
        (
            "steady state: daemon CPU s per 1,000 pings (all its work ÷ pings)",
            f"— (keepalive {KEEPALIVE_FLOOR})",
            f"{per_1000:.3f}",
            "—",
        ),
        (
            "daemon RSS (VmRSS), MiB: max in window / at end",
            f"≤ {GOAL_RSS_MIB:g}",
            f"{r.rss_max_mib:.1f} / {r.rss_end_mib:.1f}",
            _ratio(r.rss_max_mib, GOAL_RSS_MIB),
        ),
        ("daemon peak RSS over the whole run (VmHWM), MiB", "—", f"{r.hwm_mib:.1f}", "—"),
        (
            "event-loop lag p99, ms (daemon's last ~5 min)",
            f"≤ {GOAL_LAG_P99_MS:g}",
            f"{lag.get('p99', float('nan')):.1f}",
            _ratio(lag.get("p99"), GOAL_LAG_P99_MS),
        ),
        (
            "event-loop lag p50 / max, ms",
            "—",
            f"{lag.get('p50', float('nan')):.1f} / {lag.get('max', float('nan')):.1f}",
            "—",
        ),
        (
            "event-loop lag over the connect phase (asked when connected): p50 / p99 / max, ms",
            "—",
            " / ".join(
                f"{r.lag_at_connect.get(k, float('nan')):.1f}" for k in ("p50", "p99", "max")
            ),
            "—",
        ),
        (
            "pings in window: sent / failed (expected ≈ peers × window ÷ interval)",
            "failed = 0",
            f"{pings:,} / {failed} (≈ {expected:,.0f})",
            _zero(failed),
        ),
        (
            "pings over the whole run: sent / failed",
            "failed = 0",
            f"{total_sent:,} / {total_failed}",
            _zero(total_failed),
        ),
        (
            "healthy peers marked offline (`offline` incidents, whole run)",
            "0",
            f"{offline}",
            _zero(offline),
        ),
        (
            "peers not `online` at the end of the window",
            "0",
            f"{not_online} ({', '.join(f'{k} {v}' for k, v in sorted(r.statuses.items()))})",
            _zero(not_online),
        ),
        (
            "SIGTERM → exit, s / exit code",
            f"< {GOAL_SHUTDOWN_S:g} / 0",
            f"{shutdown} / {r.exit_code}",
            "✓"
            if r.shutdown_s is not None and r.shutdown_s < GOAL_SHUTDOWN_S and r.exit_code == 0
            else "✗",
        ),
        (
            "daemon log: warning/error lines; other events",
            "—",
            f"{warnings}; {noisy or 'none'}",
            "—",
        ),
        (
            "daemon at end: threads / open fds / SSH links",
            "—",
            f"{r.threads} / {r.fds} / {r.pinger_end.get('connected', 0)}",
            "—",
        ),
        (
            f"daemon `status` request ({r.peers:,} peer rows): wall s / daemon CPU s",
            "—",
            f"{r.status_call_s:.2f} / {r.status_call_cpu_s:.2f}",
            "—",
        ),
        (
            f"`clawd status --live --json` (the CLI) with {r.peers:,} peers",
            "works",
            f"ok ({r.cli_s:.2f} s)" if r.cli_ok else f"fails: {r.cli_error}",
            "✓" if r.cli_ok else "✗",
        ),
        (
            "SSH peer server process CPU % of one core (information)",
            "—",
            f"{r.server_cpu_percent:.1f}",
            "—",
        ),
    ]


def render(r: Result, quick: bool) -> str:
    lag_note = (
        " With a window shorter than 5 minutes the lag percentiles also include part of the "
        "connect phase (the daemon keeps its last 3,000 samples, 0.1 s apart)."
        if r.window_s < 300
        else ""
    )
    head = (
        "## Fleet load (the daemon, measured from outside)\n\n"
        f"Machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"{'`--quick`' if quick else 'Full'} run, one run; whole benchmark {r.total_s:.0f} s.\n\n"
        + (f"Config override: `{json.dumps(r.override)}`.\n\n" if r.override else "")
        + "`clawd run` as a subprocess (JSON backend, discovery off, static peers, default "
        "thresholds: timeout 5 s, offline after 3 misses, install check every 10th round). "
        "CPU from `/proc/PID/stat` utime+stime (all threads) over the steady-state window, which "
        f"starts {SETTLE_S:g} s after the last peer's `online` incident; RSS sampled every "
        f"{SAMPLE_S:g} s. Loop lag and pinger counters from the daemon's `status` answer (what "
        "`clawd status --live --json` prints), asked on its control socket once when connected "
        f"and once at the end (not during the window).{lag_note} MiB = "
        "2^20 bytes.\n\n"
        "| figure | goal | measured | ratio |\n|---|---|---|---|\n"
    )
    return head + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows(r))


_FRAME = re.compile(r"^(.*) \((.+?):\d+\)$")


def profile_summary(path: str, top: int = 25) -> str:
    """py-spy raw (collapsed) output: leaf time by file, inclusive time of clawd functions."""
    by_file: Counter[str] = Counter()
    clawd_inclusive: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_FRAME.match(frame) for frame in stack.split(";")]
        total += count
        leaf = frames[-1]
        by_file[leaf.group(2) if leaf else "?"] += count
        seen = {f"{m.group(1)} ({m.group(2)})" for m in frames if m and "clawd/" in m.group(2)}
        for name in seen:
            clawd_inclusive[name] += count
    if not total:
        return "py-spy: no samples"
    lines = [f"py-spy samples (GIL held): {total}", "", "self time by file:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_file.most_common(top)]
    lines += ["", "inclusive time of clawd functions:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in clawd_inclusive.most_common(top)]
    return "\n".join(lines)


def run(quick: bool = False, *, peers: int | None = None, seconds: float | None = None) -> str:
    """Run the benchmark; returns the markdown section body."""
    plan = Plan.for_mode(quick)
    plan = Plan(peers or plan.peers, seconds or plan.window_s)
    with tempfile.TemporaryDirectory(prefix="clawd-bench-fleet-") as tmp:
        result = measure(plan, Path(tmp))
    return render(result, quick)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_load", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 peers for 60 s")
    parser.add_argument("--peers", type=int, help="number of peers (default 1,000)")
    parser.add_argument("--seconds", type=float, help="steady-state window (default 300)")
    parser.add_argument("--keep", type=Path, help="work directory to keep (logs, home)")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon in the window")
    parser.add_argument(
        "--config-json",
        type=json.loads,
        default=None,
        help='merged into config.json, e.g. \'{"storage": {"peerFileIntervalSeconds": 3600}}\'',
    )
    args = parser.parse_args(argv)
    base = Plan.for_mode(args.quick)
    plan = Plan(args.peers or base.peers, args.seconds or base.window_s)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        result = measure(plan, args.keep, args.profile, args.config_json)
    else:
        with tempfile.TemporaryDirectory(prefix="clawd-bench-fleet-") as tmp:
            result = measure(plan, Path(tmp), args.profile, args.config_json)
            if result.profile and Path(result.profile).exists():
                print(profile_summary(result.profile), file=sys.stderr)
    if args.keep is not None and result.profile and Path(result.profile).exists():
        print(profile_summary(result.profile), file=sys.stderr)
    print(render(result, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
