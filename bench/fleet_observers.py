"""`detection.observers`: k = 3 observers per machine against the full mesh, on real fleets.

Each fleet comes from ``tests/fleetharness.py``: M machines, each a real OpenSSH ``sshd``
on its own 127.x address logging in a unix user of its own, and its own ``clawd run``,
``backend: postgres`` on one shared database (``tests/pgserver.py``: ``CLAW_TEST_PG_DSN``,
Docker or a throwaway pg_ctl cluster), peers found over mDNS (``peers_from="mdns"``, as
``tests/test_fleet_power_off.py``), pings every 2 s, timeout 1 s, offline after 3 missed.
For each M (4, 8, 16; ``--quick``: 4) two fleets run one after the other in the same run:
``"detection": {"indirectProbes": 0, "observers": 3}`` (each machine SSH-pinged by 3 others,
rendezvous hashing over the machines running clawd on the database; the others read its
status from the database) and ``"observers": 0`` (the full mesh). ``indirectProbes: 0`` is
the harness's own detection setting, said again because a section given replaces it whole.

Per fleet:

* start every daemon; bounded wait until every machine shows every other one online, then
  until every machine is pinged by the expected number of sources (min(k, M-1) or M-1,
  read from ``ping_history`` over the last 3 intervals);
* steady window (30 s; ``--quick`` 10 s), sampled every interval: per machine the sshd
  processes (``Fleet.sshd_pids`` without the listener: the ``[priv]`` monitor and the
  user-side process of every connection, plus the user's short-lived command processes),
  their PSS (sum of ``Pss:`` of ``/proc/PID/smaps_rollup``) and the established TCP
  connections into its sshd (``/proc/net/tcp``: the SSH sessions); CPU of every clawd daemon
  (utime+stime+cutime+cstime delta of ``/proc/PID/stat``) and of the whole host
  (``/proc/stat``); PostgreSQL connections of the database at the end of the window;
  ``ping_history`` rows stamped inside the window (counted after the fleet run, when every
  sink has delivered) ÷ window seconds;
* power-offs (2; ``--quick`` 1) of machines that are not the leader (from a status sample),
  the same victims in both modes: SIGKILL of its clawd and of every sshd process
  (``Fleet.power_off``); power-off → its ``offline`` row in ``incident_log`` (bounded
  wait), how long until every survivor shows it offline, then 3 more intervals and the
  ``offline`` rows for it are counted; power on, bounded wait until all online again,
  3 more intervals, its ``recovery`` (and stray ``online``) rows since the power-off are
  counted. ``offline`` rows about machines never powered off are counted at the end.

Needs root (a unix user per machine) and the OpenSSH server; fails with a message otherwise.
Each fleet's daemon logs (ping lines left out) are kept in ``$TMPDIR/bench-fleet-observers``.

Run: ``.venv/bin/python -m bench.fleet_observers [--quick] [--sizes 4,8] [--window S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clawd.config.sections import PostgresSettings

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR = REPO / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# tests/ is not on mypy's path (`mypy bench/...` sees these as Any; MYPYPATH=tests checks them).
from fleetharness import (  # type: ignore[import-not-found, unused-ignore]  # noqa: E402
    Fleet,
    FleetTimings,
    MachineSpec,
    StatusSample,
)
from pgserver import (  # type: ignore[import-not-found, unused-ignore]  # noqa: E402
    BasePg,
    PgUnavailableError,
    start_pg,
)
from sshpeers import sshd_path  # type: ignore[import-not-found, unused-ignore]  # noqa: E402

SECTION = "fleet-observers"
Row = tuple[str, str, str, str]
Probes = dict[str, set[str]]  # target -> the sources that pinged it

INTERVAL = 2.0
# The power-off test's ping timings. SSH connect timeout 5 s, not the harness's 1 s (production
# default: 10 s): a first full run's 16-machine full mesh starts 240 handshakes at once on 2
# cores; with 1 s many timed out, peers ran out of verification attempts and the mesh never
# assembled (149 of 240 links after 10 minutes). The same in both modes.
CONNECT_TIMEOUT = 5.0
TIMINGS = FleetTimings(
    interval=INTERVAL, timeout=1.0, offline_after_missed=3, connect_timeout=CONNECT_TIMEOUT
)
K = 3  # detection.observers' default
FULL_MESH = 0
USER_PREFIX = "clawobs"  # unix users clawobs1..N: not the fleet tests' clawfleetN
LOG_DIR = Path(tempfile.gettempdir()) / "bench-fleet-observers"

# Goals (k = 3).
GOAL_DETECT_S = 3 * INTERVAL + 2.0  # 3 intervals + 2 s = 8 s
EDGE_SLACK = 1.05  # ping rows counted in a window: a pair's ping can fall either side of an edge

# Production figures the extrapolation uses.
PROD_INTERVAL = 10.0  # ping.intervalSeconds' default
# postgres.poolMin / poolMax defaults
PROD_POOL_MIN = int(PostgresSettings.model_fields["pool_min"].default)
PROD_POOL_MAX = int(PostgresSettings.model_fields["pool_max"].default)
PG_DEFAULT_MAX_CONNECTIONS = 100
BIG_FLEET = 1000

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    window_s: float
    victims: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls((4,), 10.0, 1) if quick else cls((4, 8, 16), 30.0, 2)


# Bounded waits, generous: 16 daemons and 16 sshd on 2 cores.
def ready_timeout(m: int) -> float:
    return 60.0 + 5.0 * m


def agree_timeout(m: int) -> float:
    return 60.0 + 6.0 * m


def assign_timeout(m: int) -> float:
    return 30.0 + 3.0 * m


def offline_wait(m: int) -> float:
    return 15 * INTERVAL + m


VERDICT_WAIT = 30.0


def back_timeout(m: int) -> float:
    return 60.0 + 4.0 * m


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- /proc


def cpu_ticks(pid: int) -> int | None:
    """utime+stime+cutime+cstime of a process (all its threads, reaped children), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


def host_busy_ticks() -> int:
    """Busy jiffies of the whole host (every core): all but idle and iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4]


def pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def tcp_key(address: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp prints it (little-endian host)."""
    return socket.inet_aton(address)[::-1].hex().upper() + f":{port:04X}"


def established_by_local() -> Counter[str]:
    """Established TCP connections per local endpoint."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "01":
                found[parts[1]] += 1
    return found


def mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


# --------------------------------------------------------------------------- results


@dataclass
class Outage:
    victim: str
    detect_s: float | None = None  # power-off -> first offline row's timestamp
    witnesses: int | None = None  # observers the offline row names
    offline_rows: int = 0
    shown_s: float | None = None  # power-off -> every survivor shows it offline
    back_s: float | None = None  # power-on -> every machine shows every other online
    recovery_rows: int = 0
    online_rows: int = 0  # `online` rows after the power-off (a return should be a recovery)
    notes: list[str] = field(default_factory=list)


@dataclass
class Result:
    m: int
    observers: int
    ready_s: float | None = None
    online_s: float | None = None
    settle_s: float | None = None
    sources: tuple[int, int] | None = None  # per target, min / max, in the window
    pairs: int | None = None
    window_s: float = 0.0
    samples: int = 0
    procs_mean: float = 0.0  # sshd processes per machine (mean over machines and samples)
    procs_max: int = 0  # the most any machine had in any sample
    priv_mean: float = 0.0  # of them, root-owned (the per-connection [priv] monitors)
    pss_mib: float = 0.0  # their PSS per machine, mean
    sessions_mean: float = 0.0  # established TCP connections into a machine's sshd
    sessions_max: int = 0
    ping_rows: int | None = None
    ping_failed: int | None = None
    cpu_fleet: float | None = None  # % of one core, all daemons together
    host_cpu: float | None = None  # % of one core, the whole host
    bench_cpu: float | None = None  # % of one core, this process (the sampling)
    process_names: dict[str, float] = field(default_factory=dict)  # per machine, last sample
    pg_conns: int | None = None
    pg_deadlocks: int | None = None  # "deadlock detected" in the server's log during the fleet
    pg_lease: int | None = None
    outages: list[Outage] = field(default_factory=list)
    false_offline: int | None = None  # offline rows about machines never powered off
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    code: str = ""  # the code the fleet's daemons ran (HEAD + a hash of clawd/, migrations/)
    took_s: float = 0.0

    @property
    def mode(self) -> str:
        return "full mesh" if self.observers == FULL_MESH else f"k={self.observers}"

    @property
    def expected_sources(self) -> int:
        if self.observers == FULL_MESH:
            return self.m - 1
        return min(self.observers, self.m - 1)

    @property
    def rows_per_s(self) -> float | None:
        return None if self.ping_rows is None else self.ping_rows / self.window_s

    @property
    def expected_rows_per_s(self) -> float:
        return self.expected_sources * self.m / INTERVAL

    @property
    def cpu_per_daemon(self) -> float | None:
        return None if self.cpu_fleet is None else self.cpu_fleet / self.m

    @property
    def detections(self) -> list[float]:
        return [o.detect_s for o in self.outages if o.detect_s is not None]


# --------------------------------------------------------------------------- fleet checks


def all_online(ids: Sequence[str]) -> Callable[[list[StatusSample]], bool]:
    def check(samples: list[StatusSample]) -> bool:
        return sorted(s.gateway_id for s in samples) == sorted(ids) and all(
            s.peer_status(g) == "online" for s in samples for g in ids if g != s.gateway_id
        )

    return check


def all_show(target: str, status: str) -> Callable[[list[StatusSample]], bool]:
    def check(samples: list[StatusSample]) -> bool:
        return bool(samples) and all(s.peer_status(target) == status for s in samples)

    return check


async def probes(fleet: Fleet, seconds: float) -> Probes:
    """Who pinged whom over the last `seconds` (the daemons stamp pings on this host)."""
    rows = await fleet.db_fetch(
        "SELECT DISTINCT source_gateway, target_gateway FROM ping_history"
        ' WHERE "timestamp" > now() - make_interval(secs => $1)',
        seconds,
    )
    found: Probes = {}
    for row in rows:
        found.setdefault(row["target_gateway"], set()).add(row["source_gateway"])
    return found


async def settle(
    fleet: Fleet, ids: Sequence[str], expected: int, timeout: float
) -> tuple[float | None, Probes]:
    """Seconds until every machine is pinged by exactly `expected` sources (None: never
    within `timeout`), and the last probes seen."""
    started = time.monotonic()
    found: Probes = {}
    while True:
        found = await probes(fleet, 3 * INTERVAL)
        if all(len(found.get(t, set())) == expected for t in ids):
            return time.monotonic() - started, found
        if time.monotonic() - started >= timeout:
            return None, found
        await asyncio.sleep(INTERVAL)


async def incident_rows(
    fleet: Fleet, gateway_id: str, event: str, since: datetime
) -> list[dict[str, Any]]:
    rows = await fleet.db_fetch(
        'SELECT details, "timestamp" FROM incident_log WHERE gateway_id = $1'
        ' AND event_type = $2 AND "timestamp" >= $3 ORDER BY "timestamp", id',
        gateway_id,
        event,
        since,
    )
    return [
        {
            "details": json.loads(r["details"]) if r["details"] else {},
            "timestamp": r["timestamp"],
        }
        for r in rows
    ]


async def bounded(
    what: str, notes: list[str], awaitable: Awaitable[Any], seconds: float
) -> Any | None:
    """`awaitable`'s result, or None with a note when its bounded wait ran out."""
    try:
        return await awaitable
    except (AssertionError, TimeoutError) as exc:
        first = str(exc).splitlines()[0][:240] if str(exc) else type(exc).__name__
        notes.append(f"{what}: not within {seconds:.0f} s ({first})")
        return None


# --------------------------------------------------------------------------- steady window


def listener_pid(fleet: Fleet, gateway_id: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        path = fleet.machines[gateway_id].sshd.directory / "sshd.pid"
        return int(path.read_text().split()[0])
    return None


def command_line(pid: int, user: str) -> str:
    """A process's command line, the machine's user name replaced by USER (to add up)."""
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
        return raw.decode(errors="replace").replace(user, "USER")[:60] or "?"
    return "?"


Sampled = dict[str, tuple[int, int, int, int]]


def sample_machines(fleet: Fleet) -> tuple[Sampled, Counter[str]]:
    """Per machine: sshd processes (without the listener), of them root-owned, their PSS
    KiB, established TCP connections into its sshd; and the command lines of all of them."""
    tcp = established_by_local()
    taken: Sampled = {}
    names: Counter[str] = Counter()
    for gid, machine in fleet.machines.items():
        pids = set(fleet.sshd_pids(gid)) - {listener_pid(fleet, gid)}
        priv = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}").stat().st_uid == 0:
                    priv += 1
            names[command_line(pid, machine.sshd.user)] += 1
        pss = sum(pss_kib(pid) for pid in pids)
        sessions = tcp[tcp_key(machine.address, machine.sshd.port)]
        taken[gid] = (len(pids), priv, pss, sessions)
    return taken, names


async def steady(fleet: Fleet, result: Result, window_s: float) -> tuple[datetime, datetime]:
    """Sample the window; fills `result`'s process, memory and CPU figures. Its edges."""
    daemons = {g: m.daemon.proc.pid for g, m in fleet.machines.items() if m.daemon is not None}
    per: dict[str, list[tuple[int, int, int, int]]] = {g: [] for g in fleet.machines}
    ticks0 = {g: cpu_ticks(p) for g, p in daemons.items()}
    host0, own0 = host_busy_ticks(), time.process_time()
    began_wall, began = datetime.now(UTC), time.monotonic()
    while True:
        taken, names = await asyncio.to_thread(sample_machines, fleet)
        for gid, sample in taken.items():
            per[gid].append(sample)
        result.process_names = {name: count / result.m for name, count in names.items()}
        left = window_s - (time.monotonic() - began)
        if left <= 0.05:
            break
        await asyncio.sleep(min(INTERVAL, left))
    ticks1 = {g: cpu_ticks(p) for g, p in daemons.items()}
    host1, own1 = host_busy_ticks(), time.process_time()
    elapsed = time.monotonic() - began
    ended_wall = datetime.now(UTC)

    result.window_s = elapsed
    result.samples = min(len(v) for v in per.values())
    flat = [s for v in per.values() for s in v]
    result.procs_mean = statistics.fmean(s[0] for s in flat)
    result.procs_max = max(s[0] for s in flat)
    result.priv_mean = statistics.fmean(s[1] for s in flat)
    result.pss_mib = statistics.fmean(s[2] for s in flat) / 1024
    result.sessions_mean = statistics.fmean(s[3] for s in flat)
    result.sessions_max = max(s[3] for s in flat)
    gone = [g for g in daemons if ticks0[g] is None or ticks1[g] is None]
    if gone or len(daemons) != result.m:
        result.notes.append(f"daemons not running through the window: {sorted(gone)}")
    used = sum((ticks1[g] or 0) - (ticks0[g] or 0) for g in daemons if g not in gone)
    result.cpu_fleet = used / CLK_TCK / elapsed * 100
    result.host_cpu = (host1 - host0) / CLK_TCK / elapsed * 100
    result.bench_cpu = (own1 - own0) / elapsed * 100
    assert fleet.db is not None
    rows = await fleet.db_fetch(
        "SELECT count(*) AS n, count(*) FILTER (WHERE application_name LIKE 'clawd-lease %')"
        " AS lease FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        fleet.db.database,
    )
    result.pg_conns, result.pg_lease = int(rows[0]["n"]), int(rows[0]["lease"])
    return began_wall, ended_wall


async def count_pings(fleet: Fleet, result: Result, edges: tuple[datetime, datetime]) -> None:
    rows = await fleet.db_fetch(
        "SELECT count(*) AS n, count(*) FILTER (WHERE NOT success) AS failed,"
        " count(DISTINCT (source_gateway, target_gateway)) AS pairs FROM ping_history"
        ' WHERE "timestamp" >= $1 AND "timestamp" < $2',
        *edges,
    )
    result.ping_rows = int(rows[0]["n"])
    result.ping_failed = int(rows[0]["failed"])
    result.pairs = int(rows[0]["pairs"])
    per_target = await fleet.db_fetch(
        "SELECT target_gateway, count(DISTINCT source_gateway) AS n FROM ping_history"
        ' WHERE "timestamp" >= $1 AND "timestamp" < $2 GROUP BY target_gateway',
        *edges,
    )
    counts = [int(r["n"]) for r in per_target] + [0] * (result.m - len(per_target))
    result.sources = (min(counts), max(counts))


# --------------------------------------------------------------------------- power-offs


async def outage(fleet: Fleet, ids: Sequence[str], victim: str) -> Outage:
    m = len(ids)
    out = Outage(victim)
    survivors = [g for g in ids if g != victim]
    killed = time.time()
    since = datetime.fromtimestamp(killed - 0.5, UTC)
    await fleet.power_off(victim)

    async def offline_row() -> bool:
        return bool(await incident_rows(fleet, victim, "offline", since))

    wait = offline_wait(m)
    found = await bounded("offline row", out.notes, fleet.wait_for(offline_row, wait, 0.25), wait)
    if found is not None:
        first = (await incident_rows(fleet, victim, "offline", since))[0]
        out.detect_s = first["timestamp"].timestamp() - killed
        out.witnesses = len(first["details"].get("witnesses") or [])
    seen = await bounded(
        "every survivor shows it offline",
        out.notes,
        fleet.until(all_show(victim, "offline"), VERDICT_WAIT, gateway_ids=survivors, poll=0.5),
        VERDICT_WAIT,
    )
    if seen is not None:
        out.shown_s = time.time() - killed
    await asyncio.sleep(3 * INTERVAL)  # the other observers' verdicts, late duplicates
    out.offline_rows = len(await incident_rows(fleet, victim, "offline", since))

    powered_on = time.time()
    await fleet.power_on(victim, ready_timeout=ready_timeout(m))
    wait = back_timeout(m)
    back = await bounded(
        "all online again", out.notes, fleet.until(all_online(ids), wait, poll=1.0), wait
    )
    if back is not None:
        out.back_s = time.time() - powered_on
    await asyncio.sleep(3 * INTERVAL)
    out.recovery_rows = len(await incident_rows(fleet, victim, "recovery", since))
    out.online_rows = len(await incident_rows(fleet, victim, "online", since))
    return out


def pick_victims(ids: Sequence[str], leader: str | None, count: int) -> list[str]:
    """The highest-numbered machines that are not the leader."""
    return [g for g in reversed(ids) if g != leader][:count]


# --------------------------------------------------------------------------- one fleet


async def run_fleet(pg: BasePg, root: Path, m: int, observers: int, plan: Plan) -> Result:
    specs = tuple(MachineSpec(f"m{n}", n) for n in range(1, m + 1))
    ids = [s.gateway_id for s in specs]
    result = Result(m, observers, code=code_state())
    extra = {"detection": {"indirectProbes": 0, "observers": observers}}
    began = time.monotonic()
    server_log = pg_log_path(pg)
    log_from = server_log.stat().st_size if server_log is not None else 0
    print(f"  M={m} {result.mode}: starting", flush=True)
    async with Fleet(
        root / f"m{m}-k{observers}",
        pg,
        specs,
        timings=TIMINGS,
        user_prefix=USER_PREFIX,
        extra_config=extra,
        peers_from="mdns",
    ) as fleet:
        try:
            await fleet.start_all(ready_timeout=ready_timeout(m))
            result.ready_s = time.monotonic() - began
            wait = agree_timeout(m)
            agreed = await bounded(
                "all online after start",
                result.notes,
                fleet.until(all_online(ids), wait, poll=1.0),
                wait,
            )
            if agreed is not None:
                result.online_s = time.monotonic() - began
            result.settle_s, found = await settle(
                fleet, ids, result.expected_sources, assign_timeout(m)
            )
            if result.settle_s is None:
                shown = {t: len(found.get(t, set())) for t in ids}
                result.notes.append(
                    f"never {result.expected_sources} sources per machine within"
                    f" {assign_timeout(m):.0f} s: {shown}"
                )
            print(
                f"  M={m} {result.mode}: ready {result.ready_s:.0f} s, all online"
                f" {_f(result.online_s, 0)} s, settled {_f(result.settle_s, 0)} s more;"
                f" window {plan.window_s:.0f} s",
                flush=True,
            )
            edges = await steady(fleet, result, plan.window_s)
            leader = (await fleet.status(ids[0])).leader
            victims = pick_victims(ids, leader, plan.victims)
            try:
                for victim in victims:
                    say(f"  M={m} {result.mode}: power-off {victim} (leader {leader})")
                    result.outages.append(await outage(fleet, ids, victim))
            except Exception as exc:  # the steady figures stand; the pings are still counted
                result.error = f"power-offs: {type(exc).__name__}: {str(exc)[:400]}"
                print(f"  M={m} {result.mode}: FAILED {result.error}", flush=True)
            await count_pings(fleet, result, edges)
            offline = await fleet.db_fetch(
                "SELECT count(*) AS n FROM incident_log WHERE event_type = 'offline'"
                " AND NOT (gateway_id = ANY($1::text[]))",
                victims,
            )
            result.false_offline = int(offline[0]["n"])
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {str(exc)[:400]}"
            print(f"  M={m} {result.mode}: FAILED {result.error}", flush=True)
        finally:
            with contextlib.suppress(Exception):
                digest = fleet.log_digest()
                LOG_DIR.mkdir(parents=True, exist_ok=True)
                (LOG_DIR / f"m{m}-{observers}.log").write_text(digest)
                result.notes.extend(log_troubles(digest))
            if server_log is not None:
                with contextlib.suppress(OSError):
                    result.pg_deadlocks = save_deadlocks(server_log, log_from, m, observers)
    result.took_s = time.monotonic() - began
    print(f"  M={m} {result.mode}: done in {result.took_s:.0f} s", flush=True)
    return result


_TROUBLE = re.compile(r"level=(?P<level>warning|error) event=(?P<event>\S+)")
_WHY = re.compile(r" (?:reason|error|first_error)=\"(?:PostgreSQL at \S+ )?(?P<why>[^\"]*)\"")
# The harness's loopback PostgreSQL (by design), and what every power-off makes its observers
# log (a false `offline` is counted from incident_log instead).
_ROUTINE = {"config_loopback_host_withheld", "ssh_disconnected", "ssh_connect_failed", "offline"}


def log_troubles(digest: str) -> list[str]:
    """The daemons' warnings and errors in a fleet's logs, counted by event and reason."""
    found: Counter[str] = Counter()
    for line in digest.splitlines():
        hit = _TROUBLE.search(line)
        if hit and hit["event"] not in _ROUTINE:
            why = _WHY.search(line)
            reason = f" ({why['why'].split(chr(92) + 'n')[0][:80]})" if why else ""
            found[f"{hit['level']} {hit['event']}{reason}"] += 1
    return [f"daemon logs: {count}× {what}" for what, count in found.most_common(6)]


def pg_log_path(pg: BasePg) -> Path | None:
    """The server's log file when it is a cluster of our own (tests/pgserver.PgServer)."""
    path = getattr(pg, "log_file", None)
    return path if isinstance(path, Path) and path.is_file() else None


def save_deadlocks(server_log: Path, offset: int, m: int, observers: int) -> int:
    """The server's log lines of one fleet's run about deadlocks (each ERROR with its DETAIL,
    CONTEXT and STATEMENT lines), kept next to the daemon logs; how many deadlocks."""
    with server_log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    kept: list[str] = []
    keeping = False
    for line in text.splitlines():
        if "deadlock detected" in line:
            keeping = True
        elif not line.startswith(("\t", " ")) and not re.search(
            r"(DETAIL|HINT|CONTEXT|STATEMENT):", line
        ):
            keeping = False
        if keeping:
            kept.append(line)
    count = text.count("ERROR:  deadlock detected")
    if count:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        (LOG_DIR / f"m{m}-{observers}-postgres-deadlocks.log").write_text("\n".join(kept) + "\n")
    return count


def code_state() -> str:
    """HEAD and a hash of the working tree's clawd/ and migrations/ (the code a daemon
    started now runs): the other engineer may change it while the bench runs."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("clawd/**/*.py"), *REPO.glob("migrations/*.sql")]):
        with contextlib.suppress(OSError):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    head = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        head = done.stdout.strip() or "?"
    return f"{head}, tree {digest.hexdigest()[:10]}"


def preflight() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("it needs root (a unix user per machine; run as root)")
    if sshd_path() is None:
        problems.append("the OpenSSH server is not installed (apt-get install openssh-server)")
    if problems:
        raise RuntimeError("fleet-observers cannot run: " + "; ".join(problems))


@contextlib.contextmanager
def one_run_at_a_time() -> Iterator[None]:
    """Every run uses the same unix users (clawobs1..N) and log directory: a second run at
    the same time would count (and kill) the first one's processes. Fail instead."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise RuntimeError(
                f"fleet-observers cannot run: another run holds {LOG_DIR / '.lock'} ({holder});"
                " two at once share the unix users clawobsN and would spoil each other"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} since {datetime.now(UTC):%H:%M:%S} UTC\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


async def measure(plan: Plan) -> tuple[list[Result], dict[str, str]]:
    preflight()
    with one_run_at_a_time():
        return await _measure(plan)


async def _measure(plan: Plan) -> tuple[list[Result], dict[str, str]]:
    try:
        pg = await asyncio.to_thread(start_pg)
    except PgUnavailableError as exc:
        raise RuntimeError(f"fleet-observers cannot run: {exc}") from None
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-observers-"))
    results: list[Result] = []
    try:
        facts = {
            "pg": str(pg.fetchval("SELECT version()")).split(" on ")[0],
            "max_connections": str(pg.fetchval("SHOW max_connections")),
            "pg_kind": pg.describe(),
        }
        for m in plan.sizes:
            for observers in (K, FULL_MESH):
                results.append(await run_fleet(pg, root, m, observers, plan))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.cleanup)
        shutil.rmtree(root, ignore_errors=True)
    if all(r.error is not None for r in results):
        raise RuntimeError("every fleet failed: " + "; ".join(str(r.error) for r in results))
    return results, facts


# --------------------------------------------------------------------------- rendering


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ok(ok: bool) -> str:
    return "✓" if ok else "✗"


def med_max(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line (intercept, slope); through the origin for a single point."""
    if len(points) == 1:
        x, y = points[0]
        return 0.0, y / x if x else 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def repository_rate() -> float | None:
    """repository-throughput's measured median rows/s, from bench/results.md, if there."""
    path = Path(__file__).resolve().parent / "results.md"
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("| repository → PostgreSQL, rows/s |"):
                cell = line.split("|")[3]
                numbers = [float(n.replace(",", "")) for n in re.findall(r"[\d,]+", cell)]
                if numbers:
                    return numbers[-1]
    return None


def steady_table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| M | mode | up: ready / all online / settled, s | probing pairs (expected)"
        " | sources per machine, min–max | SSH sessions into a machine, mean / max"
        " | sshd processes per machine, mean / max (root [priv]) | per session"
        " | sshd PSS per machine, MiB | ping rows/s (expected) | failed pings"
        " | daemons CPU % of one core: fleet / per daemon | host CPU % | PG connections (lease)"
        " | false offline rows | PG deadlocks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error is not None and r.samples == 0:
            lines.append(f"| {r.m} | {r.mode} | failed: {r.error[:120]} |" + " — |" * 13)
            continue
        per_session = r.procs_mean / r.sessions_mean if r.sessions_mean else None
        settled = "never" if r.settle_s is None else f"{r.settle_s:.0f}"
        lines.append(
            f"| {r.m} | {r.mode} | {_f(r.ready_s, 0)} / {_f(r.online_s, 0)} / +{settled}"
            f" | {r.pairs if r.pairs is not None else '—'} ({r.expected_sources * r.m})"
            f" | {'—' if r.sources is None else f'{r.sources[0]}–{r.sources[1]}'}"
            f" | {r.sessions_mean:.1f} / {r.sessions_max}"
            f" | {r.procs_mean:.1f} / {r.procs_max} ({r.priv_mean:.1f})"
            f" | {_f(per_session, 2)} | {r.pss_mib:.1f}"
            f" | {_f(r.rows_per_s, 2)} ({r.expected_rows_per_s:.1f})"
            f" | {r.ping_failed if r.ping_failed is not None else '—'}"
            f" | {_f(r.cpu_fleet)} / {_f(r.cpu_per_daemon, 2)} | {_f(r.host_cpu, 0)}"
            f" | {r.pg_conns if r.pg_conns is not None else '—'}"
            f" ({r.pg_lease if r.pg_lease is not None else '—'})"
            f" | {r.false_offline if r.false_offline is not None else '—'}"
            f" | {r.pg_deadlocks if r.pg_deadlocks is not None else '—'} |"
        )
    return lines


def outage_table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| M | mode | victim | power-off → `offline` row, s | witnesses named"
        " | `offline` rows | every survivor shows it offline, s | power-on → all online, s"
        " | `recovery` rows | `online` rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for o in r.outages:
            lines.append(
                f"| {r.m} | {r.mode} | {o.victim} | {_f(o.detect_s, 2)}"
                f" | {o.witnesses if o.witnesses is not None else '—'} | {o.offline_rows}"
                f" | {_f(o.shown_s)} | {_f(o.back_s)} | {o.recovery_rows} | {o.online_rows} |"
            )
    return lines


def by_size(results: Sequence[Result]) -> dict[int, dict[int, Result]]:
    table: dict[int, dict[int, Result]] = {}
    for r in results:
        if r.error is None:
            table.setdefault(r.m, {})[r.observers] = r
    return table


def goal_rows(results: Sequence[Result]) -> list[Row]:
    ks = [r for r in results if r.observers == K and r.error is None]
    rows: list[Row] = []
    if not ks:
        return rows
    outs = [(r.m, o) for r in ks for o in r.outages]
    listed = " · ".join(
        f"M={r.m}: " + ", ".join(str(o.offline_rows) for o in r.outages) for r in ks
    )
    worst = max((o.offline_rows for _, o in outs), default=0)
    rows.append(
        (
            f"k=3: `offline` rows per power-off ({len(outs)} power-offs)",
            "1",
            listed,
            f"{worst:.2f} {_ok(bool(outs) and all(o.offline_rows == 1 for _, o in outs))}",
        )
    )
    listed = " · ".join(
        f"M={r.m}: " + ", ".join(str(o.recovery_rows) for o in r.outages) for r in ks
    )
    worst = max((o.recovery_rows for _, o in outs), default=0)
    rows.append(
        (
            "k=3: `recovery` rows per power-on",
            "1",
            listed,
            f"{worst:.2f} {_ok(bool(outs) and all(o.recovery_rows == 1 for _, o in outs))}",
        )
    )
    detections = [o.detect_s for _, o in outs if o.detect_s is not None]
    missed = len(outs) - len(detections)
    if detections:
        median = statistics.median(detections)
        shown = f"median {median:.2f} s, max {max(detections):.2f} s (n={len(detections)})"
        if missed:
            shown += f", {missed} never detected"
        rows.append(
            (
                "k=3: power-off → `offline` row, s (median / max; all M)",
                f"median ≤ {GOAL_DETECT_S:.0f} (3 intervals + 2 s)",
                shown,
                f"{median / GOAL_DETECT_S:.2f} {_ok(median <= GOAL_DETECT_S and not missed)}",
            )
        )
    sizes = by_size(results)
    for r in ks:
        full = sizes.get(r.m, {}).get(FULL_MESH)
        worth = min(K, r.m - 1)
        if full is not None and full.procs_mean and full.sessions_mean:
            per_session = full.procs_mean / full.sessions_mean
            goal = worth * per_session
            rows.append(
                (
                    f"k=3, M={r.m}: sshd processes per machine (mean; max {r.procs_max})",
                    f"≤ {goal:.1f} ({worth} observers × {per_session:.2f} per session; full"
                    f" mesh: {full.procs_mean:.1f} ÷ (M−1) = {full.procs_mean / (r.m - 1):.2f})",
                    f"{r.procs_mean:.1f}",
                    f"{r.procs_mean / goal:.2f} {_ok(r.procs_mean <= goal * EDGE_SLACK)}",
                )
            )
        if r.rows_per_s is not None:
            goal = K * r.m / INTERVAL
            rows.append(
                (
                    f"k=3, M={r.m}: fleet ping rows/s into PostgreSQL",
                    f"≤ {goal:.1f} (3·M/interval; +5% window-edge slack)",
                    f"{r.rows_per_s:.2f}",
                    f"{r.rows_per_s / goal:.2f} {_ok(r.rows_per_s <= goal * EDGE_SLACK)}",
                )
            )
    return rows


def ratio_table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| M | sshd processes | sshd PSS | SSH sessions | ping rows/s | fleet daemon CPU"
        " | expected for the per-link ones (min(3, M−1) / (M−1)) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, modes in sorted(by_size(results).items()):
        k3, full = modes.get(K), modes.get(FULL_MESH)
        if k3 is None or full is None:
            continue

        def ratio(a: float | None, b: float | None) -> str:
            return "—" if a is None or not b else f"{a / b:.2f}"

        lines.append(
            f"| {m} | {ratio(k3.procs_mean, full.procs_mean)} | {ratio(k3.pss_mib, full.pss_mib)}"
            f" | {ratio(k3.sessions_mean, full.sessions_mean)}"
            f" | {ratio(k3.rows_per_s, full.rows_per_s)} | {ratio(k3.cpu_fleet, full.cpu_fleet)}"
            f" | {min(K, m - 1) / (m - 1):.2f} |"
        )
    return lines


def extrapolation(results: Sequence[Result], facts: dict[str, str]) -> list[str]:
    sizes = by_size(results)
    fulls = [modes[FULL_MESH] for _, modes in sorted(sizes.items()) if FULL_MESH in modes]
    k3s = [modes[K] for _, modes in sorted(sizes.items()) if K in modes]
    if not fulls or not k3s:
        return ["No pair of fleets completed: nothing to extrapolate from."]
    big = fulls[-1]
    links = big.sessions_mean or big.m - 1  # sessions into a machine (M-1 when complete)
    proc_per_session = big.procs_mean / links
    pss_per_session = big.pss_mib / links
    n = BIG_FLEET
    scale = INTERVAL / PROD_INTERVAL
    # Per-daemon CPU: the full mesh against the peers each daemon pings (M-1); k=3 against M.
    # (The peers a daemon pings: probing pairs in the window ÷ M, M-1 when complete.)
    a_full, b_full = fit(
        [((r.pairs or r.m * (r.m - 1)) / r.m, r.cpu_per_daemon or 0.0) for r in fulls]
    )
    a_k, b_k = fit([(r.m, r.cpu_per_daemon or 0.0) for r in k3s])
    cpu_full_bench = a_full + b_full * (n - 1)
    cpu_full_prod = a_full + b_full * (n - 1) * scale
    cpu_k = a_k + b_k * n
    k3_big = k3s[-1]
    ram = mem_total_gib()
    repo = repository_rate()
    rows_full = n * (n - 1) / PROD_INTERVAL
    rows_k = K * n / PROD_INTERVAL
    conns_per_daemon = (k3_big.pg_conns or 0) / k3_big.m
    max_conn = int(facts.get("max_connections", PG_DEFAULT_MAX_CONNECTIONS))
    one_point = len(fulls) == 1

    # M at which each resource runs out (production interval), full mesh / k=3.
    def first_m(limit: Callable[[int], bool]) -> int | None:
        return next((m for m in range(2, 100_001) if limit(m)), None)

    break_conn = first_m(lambda m: m * (1 + PROD_POOL_MIN) > PG_DEFAULT_MAX_CONNECTIONS)
    break_lease = first_m(lambda m: m > PG_DEFAULT_MAX_CONNECTIONS)
    break_mem = first_m(lambda m: (m - 1) * pss_per_session / 1024 > ram) if ram else None
    break_cpu = first_m(lambda m: a_full + b_full * (m - 1) * scale > 100) if b_full > 0 else None
    break_rows = first_m(lambda m: m * (m - 1) / PROD_INTERVAL > repo) if repo else None
    limits_full = sorted(
        (v, name)
        for v, name in (
            (break_rows, "PostgreSQL ping writes (repository-throughput's measured rate)"),
            (break_mem, f"sshd memory ({ram:.0f} GiB RAM per machine)"),
            (break_cpu, "one core of daemon CPU per machine"),
        )
        if v is not None
    )
    k_cpu_break = first_m(lambda m: a_k + b_k * m > 100) if b_k > 0 and not one_point else None
    text = [
        f"**Extrapolation to {n:,} machines** (linear, from the measured per-session cost at"
        f" M={big.m} and the per-daemon CPU slope over M = {', '.join(str(r.m) for r in fulls)}"
        + ("; a single size: slope through the origin, crude" if one_point else "")
        + ").",
        "",
        f"* sshd, full mesh: each machine serves {n - 1} sessions; at the measured"
        f" {proc_per_session:.2f} sshd processes and {pss_per_session:.2f} MiB PSS per session"
        f" (full mesh M={big.m}: {big.procs_mean:.1f} processes, {big.pss_mib:.1f} MiB over"
        f" {links:.1f} sessions) that is ≈ {(n - 1) * proc_per_session:,.0f} sshd processes and"
        f" ≈ {(n - 1) * pss_per_session / 1024:.1f} GiB per machine. With k=3 it stays at"
        f" {K} sessions: ≈ {K * proc_per_session:.0f} processes, ≈ {K * pss_per_session:.0f} MiB"
        f" (measured at M={k3_big.m}: {k3_big.procs_mean:.1f} processes,"
        f" {k3_big.pss_mib:.1f} MiB, {k3_big.sessions_mean:.1f} sessions per machine).",
        f"* daemon CPU per machine, full mesh: {a_full:.2f} + {b_full:.3f} % of one core per"
        f" pinged peer (at {INTERVAL:.0f} s) → ≈ {cpu_full_bench:,.0f} % at {n - 1} peers every"
        f" {INTERVAL:.0f} s, ≈ {cpu_full_prod:,.0f} % at the production {PROD_INTERVAL:.0f} s"
        f" interval (pings scale with the interval; the rest does not). k=3: "
        + (
            f"{k3_big.cpu_per_daemon or 0:.2f} % per daemon at M={k3_big.m}, one size only: no"
            " slope to extrapolate"
            if one_point
            else f"{a_k:.2f} + {b_k:.4f} % per fleet member → ≈ {cpu_k:,.1f} % at {n:,} members"
        )
        + f" (each daemon pings ≈ {K} peers whatever M; what grows with M is reading the"
        " others' verdicts and computing the assignment).",
        f"* PostgreSQL writes: {K}·{n:,}/{PROD_INTERVAL:.0f} s = {rows_k:,.0f} ping rows/s with"
        f" k=3 vs {n:,}·{n - 1}/{PROD_INTERVAL:.0f} s = {rows_full:,.0f}/s for the full mesh"
        + (
            f" (repository-throughput measured {repo:,.0f} rows/s into one PostgreSQL:"
            f" the full mesh needs {rows_full / repo:.1f}× that)"
            if repo
            else ""
        )
        + ".",
        f"* PostgreSQL connections: one `clawd-lease` session per daemon = {n:,} for either"
        f" mode, plus each daemon's pool (production poolMin {PROD_POOL_MIN} … poolMax"
        f" {PROD_POOL_MAX}: {n * (1 + PROD_POOL_MIN):,}–{n * (1 + PROD_POOL_MAX):,} in all)"
        f" against max_connections {PG_DEFAULT_MAX_CONNECTIONS} by default"
        f" ({max_conn} on this server). Measured here: {conns_per_daemon:.1f} connections per"
        f" daemon at poolMin 1, poolMax 2 ({k3_big.pg_lease} lease sessions for"
        f" {k3_big.m} machines).",
        "",
        "What breaks first (the M where each runs out, at the production interval). Either"
        f" mode: the database's connections — {PG_DEFAULT_MAX_CONNECTIONS} default"
        f" max_connections are used up at M ≈ {break_conn} with production pools (poolMin"
        f" {PROD_POOL_MIN} + 1 lease session per daemon) and at M ≈ {break_lease} by the lease"
        f" sessions alone, so {n:,} machines need a pooler or a far higher max_connections"
        " (and poolMin 1) whatever k is. What the observers change — full mesh: "
        + "; ".join(f"{name} at M ≈ {v:,}" for v, name in limits_full)
        + (
            f"; so its first own limit is {limits_full[0][1]}."
            if limits_full
            else " (nothing measured grows with M)."
        )
        + " k=3: the per-machine SSH sessions, processes and PSS and the ping writes per"
        " machine stay flat"
        + (
            f"; daemon CPU reaches one core at M ≈ {k_cpu_break:,} on the measured slope."
            if k_cpu_break
            else "; daemon CPU: no slope measured (one size, or flat)."
        ),
    ]
    return text


def findings(results: Sequence[Result]) -> list[str]:
    """What the feature did wrong, or the harness could not get, per fleet."""
    found: list[str] = []
    if len({r.code for r in results}) > 1:
        found.append("the code under test changed between fleets (see Code above)")
    for r in results:
        tag = f"M={r.m} {r.mode}"
        if r.error is not None:
            found.append(f"{tag}: the run failed: {r.error}")
        found.extend(f"{tag}: {note}" for note in r.notes)
        if r.sources is not None and r.sources != (r.expected_sources, r.expected_sources):
            found.append(
                f"{tag}: sources per machine in the window {r.sources[0]}–{r.sources[1]},"
                f" expected {r.expected_sources}"
            )
        if r.observers == FULL_MESH and r.sessions_mean < r.m - 1.5:
            found.append(
                f"{tag}: the full mesh was not complete in the window ({r.sessions_mean:.1f}"
                f" sessions into a machine, {r.pairs} of {r.m * (r.m - 1)} probing pairs): its"
                " ratio row understates the full mesh"
            )
        if r.observers == K and r.sessions_mean > r.expected_sources + 0.5:
            found.append(
                f"{tag}: SSH sessions into a machine did not drop to k: mean"
                f" {r.sessions_mean:.1f}, max {r.sessions_max} (k={r.expected_sources})"
            )
        if r.host_cpu is not None and r.host_cpu > 0.85 * 100 * (os.cpu_count() or 1):
            found.append(
                f"{tag}: the host's CPU was near saturation ({r.host_cpu:.0f} % of one core,"
                f" {os.cpu_count()} cores): this fleet's CPU and timings are capped by the box"
            )
        if r.pg_deadlocks:
            found.append(
                f"{tag}: PostgreSQL logged {r.pg_deadlocks} deadlocks between the daemons' writes"
                f" (`{LOG_DIR}/m{r.m}-{r.observers}-postgres-deadlocks.log`)"
            )
        if r.ping_failed:
            found.append(f"{tag}: {r.ping_failed} failed pings in the steady window")
        if r.false_offline:
            found.append(
                f"{tag}: {r.false_offline} `offline` rows about machines never powered off"
            )
        for o in r.outages:
            found.extend(f"{tag}, power-off {o.victim}: {note}" for note in o.notes)
            if o.offline_rows != 1:
                found.append(f"{tag}, power-off {o.victim}: {o.offline_rows} `offline` rows")
            if o.recovery_rows != 1:
                found.append(f"{tag}, power-on {o.victim}: {o.recovery_rows} `recovery` rows")
            if o.online_rows:
                found.append(f"{tag}, power-on {o.victim}: {o.online_rows} `online` rows")
            if o.detect_s is not None and o.detect_s > GOAL_DETECT_S:
                found.append(
                    f"{tag}, power-off {o.victim}: detected after {o.detect_s:.1f} s"
                    f" (> {GOAL_DETECT_S:.0f} s)"
                )
    return found


def code_line(results: Sequence[Result]) -> str:
    states = list(dict.fromkeys(r.code for r in results))
    if len(states) == 1:
        return f"Code: {states[0]} (HEAD, hash of clawd/ and migrations/), the same in every fleet."
    per = "; ".join(f"M={r.m} {r.mode}: {r.code}" for r in results)
    return f"Code (HEAD, hash of clawd/ and migrations/) **changed during the run**: {per}."


def render(results: Sequence[Result], facts: dict[str, str], plan: Plan, quick: bool) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    took = sum(r.took_s for r in results)
    lines = [
        "## k=3 observers vs the full mesh on real fleets (`detection.observers`)",
        "",
        f"Machine: nproc {os.cpu_count()}, {mem_total_gib():.0f} GiB RAM, Python"
        f" {platform.python_version()}, {facts['pg']} ({facts['pg_kind']}, max_connections"
        f" {facts['max_connections']}), Linux {platform.release()}, {when}"
        f"{' (--quick)' if quick else ''}; {took / 60:.1f} min for the fleets.",
        "",
        code_line(results),
        "",
        "Fleets of `tests/fleetharness.py` (each machine a real OpenSSH sshd on its own 127.x"
        " address, its own unix user and `clawd run`; one shared PostgreSQL; peers over mDNS),"
        f" pings every {INTERVAL:.0f} s, timeout 1 s, offline after 3 missed. For each M the"
        ' k=3 fleet (`"detection": {"indirectProbes": 0, "observers": 3}`) ran, then the full'
        ' mesh (`"observers": 0`), one after the other in this run. Steady window'
        f" {plan.window_s:.0f} s sampled every {INTERVAL:.0f} s, after every machine showed"
        " every other online and every machine was pinged by the expected number of sources;"
        f" then {plan.victims} power-off(s) of non-leader machines, the same in both modes."
        " sshd processes = `Fleet.sshd_pids` without the listener (per connection a root"
        " `[priv]` monitor and the user's process; plus short-lived command processes);"
        " sessions = established TCP connections into the machine's sshd; per session ="
        " processes ÷ sessions; CPU in % of one core from /proc (host CPU: all 2 cores, the"
        " bench's own sampling included); ping rows/s = `ping_history` rows stamped in the"
        " window ÷ its length (expected min(k, M−1)·M / interval; at M=4 k=3 *is* the full"
        " mesh). Detection = power-off → the `timestamp` of its first `offline` row.",
        "",
        "### Steady state",
        "",
        *steady_table(results),
        "",
        "sshd processes per machine by command line (last sample, mean per machine): "
        + "; ".join(
            f"M={r.m} {r.mode}: "
            + ", ".join(
                f"`{name}` ×{count:.1f}"
                for name, count in sorted(r.process_names.items(), key=lambda kv: -kv[1])
            )
            for r in results
            if r.process_names
        )
        + ".",
        "",
        "### Power-offs",
        "",
        *outage_table(results),
        "",
        "Detection, power-off → `offline` row, s (median / max of "
        f"{plan.victims} power-off(s); with so few samples no p95): "
        + "; ".join(f"M={r.m} {r.mode}: {med_max(r.detections)}" for r in results)
        + ".",
        "",
        "### Goals (k=3)",
        "",
        "| figure | goal | measured | ratio |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in goal_rows(results)),
        "",
        "### k=3 ÷ full mesh, same M",
        "",
        *ratio_table(results),
        "",
        *extrapolation(results, facts),
        "",
    ]
    found = findings(results)
    lines += ["### Findings", ""]
    lines += [f"* {f}" for f in found] if found else ["* none: every check above held."]
    lines += ["", f"Daemon logs of each fleet: `{LOG_DIR}/m<M>-<observers>.log`."]
    return "\n".join(lines) + "\n"


def run(quick: bool, sizes: Sequence[int] | None = None, window_s: float | None = None) -> str:
    plan = Plan.for_mode(quick)
    if sizes:
        plan = Plan(tuple(sizes), plan.window_s, plan.victims)
    if window_s:
        plan = Plan(plan.sizes, window_s, plan.victims)
    results, facts = asyncio.run(measure(plan))
    return render(results, facts, plan, quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_observers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="M = 4 only, 10 s window")
    parser.add_argument("--sizes", help="comma-separated fleet sizes (default 4,8,16)")
    parser.add_argument("--window", type=float, help="steady window, seconds")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    print(run(args.quick, sizes, args.window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
