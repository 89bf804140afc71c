"""What trusted membership (issue 14) costs: the baseline and a candidate tree side by side.

Each repetition runs the real daemon (``python -m clawd.cli.main run``) once per tree, with
``PYTHONPATH`` naming that tree (``--base``: the code before issue 14, by default commit
BASE_COMMIT of this repository unpacked with ``git archive``; ``--code``: the candidate, by
default this checkout). Trees alternate, so both see the same machine load. In every run:

1. **verified peers** -- 4 asyncssh servers (``tests/sshpeers.py serve --homes``, its own
   process, on 127.0.213.x) that accept clawd's key, trust-on-known_hosts, and serve their own
   ``~/.openclaw/claw-clan/state.json`` (``{"gatewayId", "leadNumber"}``, over exec ``cat`` in
   ``/bin/sh`` and over SFTP) -- the identity read of issue 14; harmless to the baseline. Once
   the daemon is ``ready`` the announcer process (``bench/membership_announcer.py``) announces
   them over mDNS; figure = the time from each service's first announcement (its probing over)
   until its ``online`` incident appears in ``<home>/incidents.jsonl`` (polled every 20 ms).
2. **500 unverified announcements** -- services on 127.2.x.y:22 where nothing listens (SSH
   refused), announced after phase 1; once they were all out and the daemon's count of them
   in ``status`` has not changed for SETTLE_S (at most a timeout), daemon CPU % of
   one core over a window from ``/proc/PID/stat`` (utime+stime, all threads), RSS (VmRSS)
   sampled every 0.5 s (max and at the end) and VmHWM; the same over an equal window with only
   the 4 verified peers before them, for comparison.
3. **forget** -- goodbyes for the 500; the time from the last goodbye sent until the daemon
   holds none of them: no ``<home>/peers/unv-*.json`` file and no ``unv-*`` row in its
   ``status`` answer (asked on the control socket every 0.5 s), or a timeout.

Run: ``.venv/bin/python -m bench.membership_cost [--quick] [--code PATH] [--base PATH]``
(``CLAWD_BENCH_CODE`` / ``CLAWD_BENCH_BASE`` in the environment do the same).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet_load import (
    IncidentTail,
    _stop,
    cpu_seconds,
    live_status,
    memory_kib,
    raise_fd_limit,
    read_ports,
    start_server,
    venv_python,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mdnspeers import claw_peer

REPO = Path(__file__).resolve().parents[1]
SECTION = "membership-cost"
BASE_COMMIT = "5ffb6d8"  # main before issue 14's membership code
VERIFIED = [f"127.0.213.{i}" for i in range(1, 5)]
INTERVAL_S = 1.0
SETTLE_S = 2.0
SAMPLE_S = 0.5
READY_TIMEOUT_S = 30.0
ONLINE_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 60.0
GOAL_CPU_PERCENT = 5.0  # fleet-load's steady-state goal
GOAL_RSS_MIB = 120.0  # fleet-load's goal, for 1,000 real peers


@dataclass(frozen=True)
class Plan:
    reps: int
    unverified: int
    window_s: float  # each CPU/RSS window
    settle_timeout_s: float
    forget_timeout_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        # The whole full run must stay near 3 minutes: the baseline never forgets, so its
        # forget phase always waits the timeout out.
        if quick:
            return cls(
                reps=1, unverified=200, window_s=5.0, settle_timeout_s=15.0, forget_timeout_s=8.0
            )
        return cls(
            reps=3, unverified=500, window_s=5.0, settle_timeout_s=25.0, forget_timeout_s=8.0
        )


@dataclass
class Run:
    online_s: dict[str, float] = field(default_factory=dict)  # gateway -> announce→online
    idle_cpu: float = 0.0
    held_cpu: float = 0.0
    idle_rss_mib: float = 0.0
    held_rss_max_mib: float = 0.0
    held_rss_end_mib: float = 0.0
    hwm_mib: float = 0.0
    register_s: float = 0.0
    settle_s: float = 0.0  # last announced -> unverified count steady
    settled_rows: int = 0
    held_rows: int = 0  # unverified rows in `status` at the end of the window
    held_files: int = 0
    forget_s: float | None = None  # None: not within the plan's timeout
    left_rows: int = 0
    left_files: int = 0


def unverified_addresses(n: int) -> list[str]:
    return [f"127.2.{i // 250}.{1 + i % 250}" for i in range(n)]


_T0 = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{SECTION} {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def clawd_location(code: Path) -> str:
    """Where `import clawd` resolves with PYTHONPATH=code (proves which tree runs)."""
    out = subprocess.run(
        [venv_python(), "-c", "import clawd; print(clawd.__file__)"],
        env=dict(os.environ, PYTHONPATH=str(code)),
        cwd=code,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def base_tree(work: Path) -> Path:
    """BASE_COMMIT's tree unpacked under `work` (no worktree left behind)."""
    target = work / "base"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BASE_COMMIT],  # clawd/ alone lacks migrations/
        capture_output=True,
        timeout=60,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


class Announcer:
    """The announcer process; `command` sends one line and returns its JSON reply."""

    def __init__(self, service_type: str, groups: dict[str, list[dict[str, Any]]]) -> None:
        spec = {"service_type": service_type, "groups": groups}
        self.proc = subprocess.Popen(
            [venv_python(), "-m", "bench.membership_announcer", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )
        self._expect("ready")

    def _expect(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the announcer replies or exits
        if not line:
            raise RuntimeError(f"announcer exited ({self.proc.wait(10)}) before {event}")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("event") != event:
            raise RuntimeError(f"announcer: expected {event}, got {reply}")
        return reply

    def command(self, line: str, event: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._expect(event)

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def verified_leads() -> dict[str, int]:
    """Gateway id -> lead number of the verified peers (VERIFIED's order)."""
    return {f"ver-{i}": 10 + i for i in range(len(VERIFIED))}


def write_state_files(keys: Path) -> None:
    """Each verified peer's own claw-clan state.json, what issue 14's identity read reads."""
    for address, (gateway, lead) in zip(VERIFIED, verified_leads().items(), strict=True):
        state = keys / "homes" / address / ".openclaw" / "claw-clan" / "state.json"
        state.write_text(json.dumps({"gatewayId": gateway, "leadNumber": lead}))


def write_config(home: Path, keys: Path, service_type: str) -> None:
    config = {
        "backend": "json",
        "instance": {
            "gatewayId": "bench-self",
            "name": "bench-self",
            "sshUser": "claw",
            "leadNumber": 1,
            "ip": "127.0.0.1",
        },
        "ping": {"intervalSeconds": INTERVAL_S},
        "ssh": {
            "knownHosts": str(keys / "known_hosts"),
            "clientKeys": [str(keys / "id_ed25519")],
        },
        "discovery": {"interfaces": ["127.0.0.1"], "serviceType": service_type},
        "skills": {"syncInterval": "off"},
    }
    home.mkdir(mode=0o700)
    (home / "config.json").write_text(json.dumps(config, indent=1))
    (home / "config.json").chmod(0o600)


def held(home: Path) -> tuple[int, int]:
    """(unverified rows in the daemon's `status`, unverified peer files)."""
    status, _ = live_status(home)
    # As peers (the baseline makes every announcement one), or held as candidates until
    # proven (the `unverified` list of the new code): both are the daemon holding them.
    listed = [*status["peers"], *status.get("unverified", [])]
    rows = sum(1 for row in listed if str(row.get("gatewayId", "")).startswith("unv-"))
    files = sum(1 for _ in (home / "peers").glob("unv-*.json"))
    return rows, files


def settle(home: Path, timeout_s: float) -> tuple[float, int]:
    """Wait until the daemon's count of unverified rows stops changing for SETTLE_S.

    The daemon resolves announcements a few at a time, so right after the last went out it
    is still taking them in; the window must see it holding them, not learning them.
    (seconds waited, rows then); gives up after `timeout_s`.
    """
    t0 = time.monotonic()
    last, since = -1, t0
    while (now := time.monotonic()) - t0 < timeout_s:
        rows, _ = held(home)
        if rows != last:
            last, since = rows, now
        elif now - since >= SETTLE_S:
            break
        time.sleep(SAMPLE_S)
    return time.monotonic() - t0, last


def window(pid: int, seconds: float) -> tuple[float, float, float]:
    """(CPU % of one core, max VmRSS MiB, VmRSS MiB at the end) over `seconds`."""
    t0, cpu0 = time.monotonic(), cpu_seconds(pid)
    rss = [memory_kib(pid)["VmRSS"]]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(SAMPLE_S, max(0.0, t0 + seconds - time.monotonic())))
        rss.append(memory_kib(pid)["VmRSS"])
    cpu = 100.0 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    return cpu, max(rss) / 1024, rss[-1] / 1024


def one_run(
    plan: Plan, code: Path, keys: Path, work: Path, unverified: list[dict[str, Any]]
) -> Run:
    run = Run()
    service_type = f"_m{secrets.token_hex(4)}._tcp.local."  # this run's own: no cross-talk
    home = work / "home"
    write_config(home, keys, service_type)
    leads = verified_leads()
    ports = json.loads((keys / "ports.json").read_text())
    groups = {
        "verified": [
            claw_peer(g, lead_number=n, ip=a, ssh_port=ports[a]).to_json()
            for (g, n), a in zip(leads.items(), VERIFIED, strict=True)
        ],
        "unverified": unverified,
    }
    log = work / "daemon.log"
    announcer = Announcer(service_type, groups)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        with log.open("ab") as out:
            env = dict(os.environ, CLAW_HOME=str(home), PYTHONPATH=str(code))
            for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
                env.pop(var, None)
            daemon = subprocess.Popen(
                [venv_python(), "-m", "clawd.cli.main", "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=code,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "event=ready" not in log.read_text(errors="replace"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"clawd not ready (exit {daemon.poll()}): {tail}")
            time.sleep(0.05)

        # 1. verified peers: first announcement -> online
        announced = announcer.command("register verified", "registered")["announced"]
        tail = IncidentTail(home / "incidents.jsonl")
        deadline = time.monotonic() + ONLINE_TIMEOUT_S
        while len(run.online_s) < len(leads):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sorted(run.online_s)} online; see {log}")
            tail.poll()
            now = time.monotonic()
            for gateway in tail.online - set(run.online_s):
                run.online_s[gateway] = now - announced[gateway]
            time.sleep(0.02)
        _progress(f"verified online: {max(run.online_s.values()):.2f}s")

        # 2. 500 unverified announcements held
        run.idle_cpu, _, run.idle_rss_mib = window(daemon.pid, plan.window_s)
        t0 = time.monotonic()
        announcer.command("register unverified", "registered")
        run.register_s = time.monotonic() - t0
        run.settle_s, run.settled_rows = settle(home, plan.settle_timeout_s)
        run.held_cpu, run.held_rss_max_mib, run.held_rss_end_mib = window(daemon.pid, plan.window_s)
        run.hwm_mib = memory_kib(daemon.pid)["VmHWM"] / 1024
        run.held_rows, run.held_files = held(home)
        _progress(
            f"held {run.held_rows} rows / {run.held_files} files: CPU {run.held_cpu:.1f}% "
            f"RSS {run.held_rss_max_mib:.1f} MiB"
        )

        # 3. goodbyes -> none held
        sent = announcer.command("unregister unverified", "unregistered")["sent"]
        while True:
            run.left_rows, run.left_files = held(home)
            now = time.monotonic()
            if run.left_rows == 0 and run.left_files == 0:
                run.forget_s = now - sent
                break
            if now - sent > plan.forget_timeout_s:
                break
            time.sleep(SAMPLE_S)
        _progress(f"forget: {run.forget_s} (left {run.left_rows} rows / {run.left_files} files)")
    finally:
        _stop(daemon, 15.0)
        announcer.close()
    return run


@dataclass
class Result:
    plan: Plan
    trees: dict[str, tuple[Path, str]]  # label -> (tree, where clawd imports from)
    runs: dict[str, list[Run]]
    total_s: float = 0.0


def measure(plan: Plan, work: Path, code: Path, base: Path | None) -> Result:
    began = time.monotonic()
    raise_fd_limit()
    base = base or base_tree(work)
    trees = {
        label: (tree, clawd_location(tree))
        for label, tree in (("baseline", base), ("candidate", code))
    }
    unverified = [
        claw_peer(f"unv-{i:03d}", lead_number=200 + i, ip=address).to_json()
        for i, address in enumerate(unverified_addresses(plan.unverified))
    ]
    keys = work / "keys"
    keys.mkdir()
    server = start_server(keys, VERIFIED, work / "server.log")
    runs: dict[str, list[Run]] = {label: [] for label in trees}
    try:
        ports = read_ports(server, 60.0)
        if set(ports) != set(VERIFIED):
            raise RuntimeError(f"SSH peer server listens on {sorted(ports)}, not {VERIFIED}")
        write_state_files(keys)
        (keys / "ports.json").write_text(json.dumps(ports))
        for rep in range(plan.reps):
            for label, (tree, _) in trees.items():
                _progress(f"rep {rep + 1}/{plan.reps}: {label}")
                run_dir = work / f"{label}-{rep}"
                run_dir.mkdir()
                runs[label].append(one_run(plan, tree, keys, run_dir, unverified))
    finally:
        _stop(server, 30.0)
    return Result(plan, trees, runs, time.monotonic() - began)


# --------------------------------------------------------------------------- report


def span(values: Sequence[float], digits: int = 2) -> str:
    """min-median (one value for one run)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{min(values):.{digits}f}–{statistics.median(values):.{digits}f}"


def _forget(runs: Sequence[Run], timeout_s: float) -> str:
    done = [r.forget_s for r in runs if r.forget_s is not None]
    if len(done) == len(runs):
        return span(done)
    left = max(r.left_rows for r in runs), max(r.left_files for r in runs)
    return (
        f"not within {timeout_s:g} s in {len(runs) - len(done)} of {len(runs)} "
        f"(still {left[0]} rows / {left[1]} files)"
    )


def _ok(value: float, goal: float) -> str:
    return f"{value / goal:.2f} {'✓' if value <= goal else '✗'}"


def rows(r: Result) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    all4 = {k: [max(run.online_s.values()) for run in v] for k, v in r.runs.items()}
    each = {k: [s for run in v for s in run.online_s.values()] for k, v in r.runs.items()}
    base_all4 = statistics.median(all4["baseline"])
    for label, runs in r.runs.items():
        cand = label == "candidate"
        out += [
            (
                f"{label}: first announcement → `online`, all {len(VERIFIED)} verified peers, s",
                f"≤ {2 * base_all4:.2f} (2× baseline)" if cand else "—",
                span(all4[label]),
                _ok(statistics.median(all4[label]), 2 * base_all4) if cand else "—",
            ),
            (
                f"{label}: same, each peer (median of {len(each[label])})",
                "—",
                f"{statistics.median(each[label]):.2f}",
                "—",
            ),
            (
                f"{label}: daemon CPU % of one core, 4 verified peers only",
                "—",
                span([x.idle_cpu for x in runs]),
                "—",
            ),
            (
                f"{label}: daemon CPU % of one core, {r.plan.unverified} unverified "
                "announcements held",
                f"≤ {GOAL_CPU_PERCENT:g}" if cand else "—",
                span([x.held_cpu for x in runs]),
                _ok(statistics.median(x.held_cpu for x in runs), GOAL_CPU_PERCENT) if cand else "—",
            ),
            (
                f"{label}: daemon RSS MiB, 4 verified only (end) / {r.plan.unverified} "
                "held: max, end / VmHWM",
                f"≤ {GOAL_RSS_MIB:g} (VmHWM)" if cand else "—",
                " / ".join(
                    span([getattr(x, a) for x in runs], 1)
                    for a in ("idle_rss_mib", "held_rss_max_mib", "held_rss_end_mib", "hwm_mib")
                ),
                _ok(statistics.median(x.hwm_mib for x in runs), GOAL_RSS_MIB) if cand else "—",
            ),
            (
                f"{label}: last unverified announced → their count in `status` steady, s "
                "(rows then)",
                "—",
                f"{span([x.settle_s for x in runs], 1)} "
                f"({span([float(x.settled_rows) for x in runs], 0)})",
                "—",
            ),
            (
                f"{label}: unverified the daemon holds after the window: `status` rows / "
                "peer files",
                "—",
                " / ".join(
                    span([float(getattr(x, a)) for x in runs], 0)
                    for a in ("held_rows", "held_files")
                ),
                "—",
            ),
            (
                f"{label}: goodbyes sent → none held (no row, no file), s",
                f"≤ {r.plan.forget_timeout_s:g}" if cand else "—",
                _forget(runs, r.plan.forget_timeout_s),
                ("✓" if all(x.forget_s is not None for x in runs) else "✗") if cand else "—",
            ),
        ]
    registers = [x.register_s for v in r.runs.values() for x in v]
    out.append(
        (
            f"announcer: {r.plan.unverified} services probed and announced, s (information)",
            "—",
            span(registers, 1),
            "—",
        )
    )
    return out


def render(r: Result, quick: bool) -> str:
    trees = "; ".join(f"{k} `{tree}` (imports `{loc}`)" for k, (tree, loc) in r.trees.items())
    head = (
        "## Membership cost (issue 14: verified peers, unverified announcements)\n\n"
        f"Machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"{'`--quick`, ' if quick else ''}{r.plan.reps} repetition(s) per tree, alternating; "
        f"measured = min–median. Whole benchmark {r.total_s:.0f} s. Trees: {trees}.\n\n"
        f"`clawd run` as a subprocess (JSON backend, ping every {INTERVAL_S:g} s, mDNS on "
        f"127.0.0.1 with a service type of the run's own). Verified peers: {len(VERIFIED)} "
        "asyncssh servers in another process, host keys in known_hosts, each serving its own "
        "`~/.openclaw/claw-clan/state.json`. Unverified: services on 127.2.x.y:22 (nothing "
        f"listens). CPU from `/proc/PID/stat` over {r.plan.window_s:g} s windows (the "
        "unverified one starts when their count in `status` has been steady "
        f"{SETTLE_S:g} s), RSS sampled every {SAMPLE_S:g} s. Forget time: from the last "
        "goodbye sent until no `unv-*` row in "
        "the daemon's `status` answer (peers, or `unverified` candidates) and no "
        "`<home>/peers/unv-*.json`.\n\n"
        "| figure | goal | measured | ratio |\n|---|---|---|---|\n"
    )
    return head + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows(r))


def run(quick: bool = False, code: Path | None = None, base: Path | None = None) -> str:
    """Run the benchmark; returns the markdown section body."""
    code = code or Path(os.environ.get("CLAWD_BENCH_CODE") or REPO)
    env_base = os.environ.get("CLAWD_BENCH_BASE")
    base = base or (Path(env_base) if env_base else None)
    with tempfile.TemporaryDirectory(prefix="clawd-bench-membership-") as tmp:
        result = measure(Plan.for_mode(quick), Path(tmp), code.resolve(), base)
    return render(result, quick)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.membership_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one repetition per tree")
    parser.add_argument("--code", type=Path, help="candidate clawd tree (default: this checkout)")
    parser.add_argument(
        "--base", type=Path, help=f"baseline clawd tree (default: {BASE_COMMIT} via git archive)"
    )
    args = parser.parse_args(argv)
    print(run(args.quick, args.code, args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
