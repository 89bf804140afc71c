"""`make demo`: five simulated peers on loopback, clawd, and a scripted outage story."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from clawd.core.errors import ClawdError
from clawd.serve.control import request
from clawd.serve.status import render_table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the simulated peers live with the tests

from mdnspeers import START_TIMEOUT, FakePeer, MdnsPeers, claw_peer  # noqa: E402
from pgserver import PgServer, PgUnavailableError, find_pg_bin  # noqa: E402
from sshpeers import SshFleet, SshPeer  # noqa: E402

PEERS = (  # name, address, lead number (lower leads; clawd itself has SELF_LEAD)
    ("alpha", "127.0.0.2", 1),
    ("bravo", "127.0.0.3", 2),
    ("charlie", "127.0.0.4", 3),
    ("delta", "127.0.0.5", 4),
    ("echo", "127.0.0.6", 5),
)
SELF_ID = "clawd"
SELF_LEAD = 100  # above every peer: clawd never leads, so it never reinstalls or pushes
MISSED = 3
MDNS_GRACE = MISSED + 1  # its mDNS answers keep a peer with SSH down unresponsive this long
DB_USER = "claw"
DB_NAME = "claw_clan"
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
REDRAW_SECONDS = 0.5
WATCH_SECONDS = 0.2


class DemoError(Exception):
    """A step of the story did not happen in time."""


@dataclass(frozen=True)
class Pace:
    """How fast the story runs."""

    interval: float  # ping.intervalSeconds
    pause: float  # seconds to watch the table after each step

    @property
    def step_timeout(self) -> float:
        return 15 + self.interval * (MDNS_GRACE + 4)


@dataclass
class Demo:
    """Everything the demo started, so `close()` can stop it in any state."""

    args: argparse.Namespace
    pace: Pace
    screen: Screen
    tmp: Path
    service_type: str = field(default_factory=lambda: f"_demo-{secrets.token_hex(3)}._tcp.local.")
    fleet: SshFleet | None = None
    peers: dict[str, SshPeer] = field(default_factory=dict)
    mdns: MdnsPeers | None = None
    pg: PgServer | None = None
    pg_start: asyncio.Future[None] | None = None
    pg_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    daemon: asyncio.subprocess.Process | None = None
    seen_incidents: int = 0
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    @property
    def log_path(self) -> Path:
        return self.tmp / "clawd.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, CLAW_HOME=str(self.home))
        env.pop("JOURNAL_STREAM", None)  # log lines to the file, not to the journal
        if self.pg is not None:
            env["CLAW_PG_PASS"] = self.pg_password  # kept out of config.json
        return env

    def record(self, **item: Any) -> None:
        """Note a PID or directory in --record FILE, for the test that checks cleanup."""
        if self.args.record:
            with Path(self.args.record).open("a", encoding="utf-8") as out:
                out.write(json.dumps(item) + "\n")

    # ---- the parts

    async def start_peers(self) -> None:
        first, last = PEERS[0][1], PEERS[-1][1]
        self.screen.say(f"▶ starting {len(PEERS)} SSH servers on {first}–{last} (asyncssh)")
        keys = self.tmp / "keys"
        keys.mkdir()
        self.fleet = SshFleet(keys)
        for name, address, lead in PEERS:
            # Each holds its identity in its own state.json: what clawd proves over SSH.
            self.peers[name] = (await self.fleet.add_peer(address)).claim(name, lead)
        (keys / "known_hosts").write_text(self.fleet.known_hosts_text())
        self.screen.say(f"▶ announcing them over mDNS as {self.service_type} (loopback only)")
        announced = [
            claw_peer(name, lead_number=lead, ip=addr, ssh_port=self.peers[name].port)
            for name, addr, lead in PEERS
        ]
        self.mdns = Announcer(
            self.service_type, announced, lambda pid: self.record(what="mdns", pid=pid)
        )
        await self.mdns.start()

    async def start_postgres(self) -> str:
        """The backend to use: a fresh cluster's `postgres`, else `json` (and why)."""
        if self.args.backend == "json":
            return "json"
        try:
            if find_pg_bin() is None:
                raise PgUnavailableError("no PostgreSQL server binaries (initdb, pg_ctl)")
            self.screen.say("▶ starting a throwaway PostgreSQL cluster")
            self.pg = PgServer()
            self.pg_start = asyncio.ensure_future(asyncio.to_thread(self._init_pg, self.pg))
            await asyncio.shield(self.pg_start)
        except (PgUnavailableError, RuntimeError, OSError) as exc:
            if self.args.backend == "postgres":
                raise
            reason = str(exc).splitlines()[0]
            self.screen.say(f"  PostgreSQL not available ({reason}): JSON backend")
            await self._stop_postgres()
            return "json"
        assert self.pg is not None
        self.screen.say(f"  PostgreSQL on 127.0.0.1:{self.pg.port}, database {DB_NAME}")
        return "postgres"

    def _init_pg(self, server: PgServer) -> None:
        server.start()
        self.record(what="pg", pid=server.postmaster_pid(), path=str(server.tmp_dir))
        server.create_role(DB_USER, self.pg_password)
        server.execute(f"ALTER ROLE {DB_USER} CREATEDB")  # backups verify by a scratch restore
        server.create_database(DB_NAME, owner=DB_USER)

    def write_config(self, backend: str) -> None:
        config: dict[str, Any] = {
            "backend": backend,
            "instance": {
                "gatewayId": SELF_ID,
                "name": SELF_ID,
                "leadNumber": SELF_LEAD,
                "ip": "127.0.0.1",
                "sshUser": "claw",
            },
            "ping": {
                "intervalSeconds": self.pace.interval,
                "timeoutSeconds": round(self.pace.interval * 0.8, 3),  # below the interval
                "offlineAfterMissed": MISSED,
                "mdnsGraceMisses": MDNS_GRACE,
            },
            "ssh": {
                "knownHosts": str(self.tmp / "keys" / "known_hosts"),
                "clientKeys": [str(self.tmp / "keys" / "id_ed25519")],
                "connectTimeoutSeconds": 2,
                "reconnectInitialSeconds": self.pace.interval / 2,
                "reconnectMaxSeconds": self.pace.interval,
            },
            "discovery": {
                "enabled": True,
                "serviceType": self.service_type,
                "interfaces": ["127.0.0.1"],
            },
            # The demo's other machines are simulated and run no clawd: they cannot hold the
            # leader lease, and the story shows a leader change among them.
            "storage": {"peerFileIntervalSeconds": self.pace.interval, "leaderLease": False},
            "skills": {"syncInterval": "off"},
        }
        if self.pg is not None:
            config["postgres"] = {
                "host": self.pg.host,
                "port": self.pg.port,
                "database": DB_NAME,
                "user": DB_USER,
                "poolMin": 1,
                "poolMax": 4,
            }
            config["backup"] = {"pgBinDir": str(self.pg.bin_dir)}
        self.home.mkdir(mode=0o700)
        (self.home / "config.json").write_text(json.dumps(config, indent=2))

    async def start_daemon(self) -> None:
        self.screen.say(
            f"▶ starting clawd (ping every {self.pace.interval:g} s, offline after "
            f"{MISSED} misses; log in {self.log_path.name})"
        )
        with self.log_path.open("ab") as log:
            self.daemon = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "clawd.cli.main",
                "run",
                env=self.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops clawd itself
            )
        self.record(what="clawd", pid=self.daemon.pid)
        await self.wait_for(lambda: "event=ready" in self.log_text(), "clawd to be ready", 30)

    async def stop_daemon(self) -> int | None:
        proc = self.daemon
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.daemon = None  # only now: a cancelled wait above leaves it for close()
        return proc.returncode

    async def _stop_postgres(self) -> None:
        if self.pg_start is not None:
            with contextlib.suppress(Exception):
                await self.pg_start  # a cancelled wait leaves the thread running: let it finish
        server, self.pg = self.pg, None
        if server is not None:
            await asyncio.to_thread(server.cleanup)

    async def close(self) -> list[str]:
        """Stop everything started so far, each part even if another fails; what was stopped."""
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        if self.daemon is not None:
            steps.append(("clawd", self.stop_daemon))
        if self.mdns is not None:
            steps.append(("the mDNS announcer", self.mdns.aclose))
        if self.fleet is not None:
            steps.append((f"{len(self.fleet.peers)} SSH servers", self.fleet.close))
        if self.pg_start is not None:
            steps.append(("PostgreSQL", self._stop_postgres))
        for what, step in steps:
            try:
                await asyncio.wait_for(step(), 60)
            except Exception as exc:
                print(f"cleanup: stopping {what} failed: {exc!r}", file=sys.stderr)
        return [what for what, _ in steps]

    # ---- watching the daemon's files

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def incidents(self) -> list[dict[str, Any]]:
        try:
            lines = (self.home / "incidents.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def has_incident(self, event: str, gateway: str | None = None, **details: Any) -> bool:
        return any(
            i["eventType"] == event
            and (gateway is None or i["gatewayId"] == gateway)
            and all(i["details"].get(k) == v for k, v in details.items())
            for i in self.incidents()
        )

    def peer_status(self, name: str) -> str | None:
        try:
            status: str = json.loads((self.home / "peers" / f"{name}.json").read_text())["status"]
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return status

    def leader(self) -> str | None:
        try:
            leader: str | None = json.loads((self.home / "fleet.json").read_text())["leader"]
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return leader

    def narrate_changes(self) -> None:
        """Say each new incident and each move to `unresponsive`."""
        incidents = self.incidents()
        for incident in incidents[self.seen_incidents :]:
            self.screen.say(format_incident(incident))
        self.seen_incidents = len(incidents)
        for name, *_ in PEERS:
            status = self.peer_status(name)
            if status == "unresponsive" and self.statuses.get(name) != status:
                self.screen.say(
                    f"  · {name} unresponsive: SSH refused, its mDNS announcer still answers"
                )
            if status is not None:
                self.statuses[name] = status

    async def wait_for(self, check: Callable[[], bool], what: str, within: float) -> None:
        deadline = time.monotonic() + within
        while not check():
            if self.daemon is not None and self.daemon.returncode is not None:
                raise DemoError(f"clawd exited ({self.daemon.returncode}) waiting for {what}")
            if time.monotonic() > deadline:
                raise DemoError(f"no {what} within {within:.0f} s")
            await asyncio.sleep(0.1)

    async def cli(self, *args: str) -> tuple[int, str]:
        """`clawd ARGS` against the demo's home: exit code and output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clawd.cli.main",
            *args,
            env=self.env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(errors="replace").rstrip()


class Announcer(MdnsPeers):
    """`MdnsPeers` in a session of its own: a terminal's Ctrl-C goes to the demo only."""

    def __init__(
        self, service_type: str, peers: list[FakePeer], spawned: Callable[[int], None]
    ) -> None:
        super().__init__(service_type, peers)
        self.spawned = spawned

    async def start(self) -> None:
        spec = {
            "service_type": self.service_type,
            "interfaces": self.interfaces,
            "peers": [peer.to_json() for peer in self.peers],
        }
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "mdnspeers.py"),
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.spawned(self._proc.pid)
        await self._expect("ready", START_TIMEOUT)


# ---- the screen
def format_incident(incident: dict[str, Any], stamp: bool = False) -> str:
    """One narration line for an incidents.jsonl record, optionally with its local time."""
    event, gateway, details = incident["eventType"], incident["gatewayId"], incident["details"]
    if event == "leader_change":
        text = f"{details.get('old') or 'none'} → {details.get('new') or 'none'}"
    elif event == "offline":
        text = f"{gateway} after {details.get('missed_pings')} missed pings"
    elif event == "recovery":
        text = f"{gateway} back after {details.get('downtime_seconds')} s down"
    else:
        text = gateway
    if stamp:
        when = datetime.fromisoformat(incident["timestamp"]).astimezone()
        return f"{when:%H:%M:%S}  {event:<13} {text}"
    return f"  ⚑ incident {event}: {text}"


def format_backup(line: str) -> str:
    """One narration line for the daemon's backup_done/backup_failed log line."""
    fields = dict(
        part.split("=", 1) for part in shlex.split(line[line.index("event=") :]) if "=" in part
    )
    if fields.get("event") != "backup_done":
        return f"  ✗ backup failed: {fields.get('reason')}"
    files = fields.get("files", "").replace(",", ", ")
    checks = f"verified {fields.get('verified')}, restore check {fields.get('restore_check')}"
    return f"  ✓ backup: {files} ({fields.get('size')}, {checks})"


class Screen:
    """Live: a table redrawn in place with the latest narration below; else plain lines."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.lines: deque[str] = deque(maxlen=12)
        self._demo: Demo | None = None
        self._backend = ""
        self._task: asyncio.Task[None] | None = None
        self._table = ""
        self._started = time.monotonic()

    def say(self, line: str) -> None:
        self.lines.append(line)
        if not (self.live and self._task is not None):
            print(line, flush=True)

    def attach(self, demo: Demo, backend: str) -> None:
        """Start watching the daemon's files (and redrawing, when live)."""
        self._demo, self._backend = demo, backend
        self._task = asyncio.create_task(self._run())

    async def detach(self) -> None:
        """Stop watching; a live screen is drawn one last time and then left alone."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.live:
            sys.stdout.write(CLEAR + await self._render())
            sys.stdout.flush()
        if self._demo is not None:
            self._demo.narrate_changes()

    async def step_done(self, pause: float) -> None:
        """After a step: catch up on changes, print the table unless live, let it sink in."""
        if self._demo is not None:
            self._demo.narrate_changes()
        if not self.live:
            print(textwrap.indent(await self.table(), "    "), flush=True)
        await asyncio.sleep(pause)

    async def table(self) -> str:
        """`clawd status --live`'s table; the last one once clawd has stopped."""
        if self._demo is None:
            return ""
        # Never JsonStore.load() here: it removes temp files the running daemon is renaming.
        with contextlib.suppress(ClawdError, OSError, TimeoutError, ValueError):
            answer = await request(self._demo.home, "status", wait_seconds=5)
            self._table = render_table(answer.get("peers", []), answer.get("leader"))
        return self._table

    async def _render(self) -> str:
        elapsed = time.monotonic() - self._started
        assert self._demo is not None
        head = (
            f"clawd demo · backend {self._backend} · {elapsed:.0f} s · {self._demo.tmp}"
            " · Ctrl-C stops it all"
        )
        return "\n".join([head, "", await self.table(), "", *self.lines, ""])

    async def _run(self) -> None:
        assert self._demo is not None
        while True:
            self._demo.narrate_changes()
            if self.live:
                sys.stdout.write(CLEAR + await self._render())
                sys.stdout.flush()
            await asyncio.sleep(REDRAW_SECONDS if self.live else WATCH_SECONDS)


# ---- the story


async def story(demo: Demo) -> None:
    screen, pace = demo.screen, demo.pace
    await demo.start_peers()
    backend = await demo.start_postgres()
    demo.write_config(backend)
    await demo.start_daemon()
    screen.attach(demo, backend)

    names = [name for name, *_ in PEERS]
    await demo.wait_for(
        lambda: all(demo.peer_status(n) == "online" for n in names) and demo.leader() == "alpha",
        "peers online with alpha leading",
        demo.pace.step_timeout,
    )
    demo.seen_incidents = len(demo.incidents())  # the start's incidents are in the listing
    screen.say(f"  ✓ all {len(names)} peers online; leader alpha (lowest lead number, 1)")
    await screen.step_done(pace.pause)

    charlie = demo.peers["charlie"]
    screen.say(f"▶ stopping peer charlie ({charlie.address}): SSH down, no mDNS goodbye")
    await charlie.stop()
    await demo.wait_for(
        lambda: demo.has_incident("offline", "charlie"), "offline incident", pace.step_timeout
    )
    await screen.step_done(pace.pause)

    screen.say("▶ starting charlie again")
    await charlie.start()
    await demo.wait_for(
        lambda: demo.has_incident("recovery", "charlie"), "recovery incident", pace.step_timeout
    )
    await screen.step_done(pace.pause)

    alpha = demo.peers["alpha"]
    screen.say(f"▶ stopping the leader alpha ({alpha.address})")
    await alpha.stop()
    await demo.wait_for(
        lambda: demo.has_incident("leader_change", old="alpha", new="bravo"),
        "leader_change to bravo",
        pace.step_timeout,
    )
    await demo.wait_for(
        lambda: demo.has_incident("offline", "alpha"), "offline incident", pace.step_timeout
    )
    await screen.step_done(pace.pause)

    screen.say("▶ kill -USR1 clawd: a backup now")
    assert demo.daemon is not None
    mark = len(demo.log_text())
    demo.daemon.send_signal(signal.SIGUSR1)
    await demo.wait_for(
        lambda: (
            "event=backup_done" in demo.log_text()[mark:]
            or "event=backup_failed" in demo.log_text()[mark:]
        ),
        "backup result",
        120,
    )
    for line in demo.log_text()[mark:].splitlines():
        if "event=backup_done" in line or "event=backup_failed" in line:
            screen.say(format_backup(line))
    await screen.step_done(pace.pause)

    screen.say("▶ stopping clawd (SIGTERM: it flushes every pending write)")
    code = await demo.stop_daemon()
    await screen.detach()
    print(f"  clawd exited with {code}")
    if code != 0:
        raise DemoError(f"clawd exited with {code}")
    await show_history(demo, backend)


async def show_history(demo: Demo, backend: str) -> None:
    print("\n$ clawd incidents")
    code, out = await demo.cli("incidents")
    if code == 2 and backend == "json":
        print(f"({out.removeprefix('error: ')})\nfrom incidents.jsonl instead:")
        out = "\n".join(format_incident(i, stamp=True) for i in demo.incidents())
    elif code != 0:
        raise DemoError(f"clawd incidents exited with {code}:\n{out}")
    print(out)
    print("\n$ clawd report")
    code, out = await demo.cli("report")
    if code == 2 and backend == "json":
        out = f"(not with the JSON backend: {out.removeprefix('error: ')})"
    elif code != 0:
        raise DemoError(f"clawd report exited with {code}:\n{out}")
    print(out)


# ---- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fast", action="store_true", help="short pings and no pauses (tests)")
    parser.add_argument(
        "--backend",
        choices=("auto", "postgres", "json"),
        default="auto",
        help="auto: PostgreSQL when its binaries are installed, else JSON",
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo's temp dir")
    parser.add_argument("--plain", action="store_true", help="no live table even on a TTY")
    parser.add_argument("--record", metavar="FILE", help="append started PIDs and dirs to FILE")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    pace = Pace(interval=0.4, pause=0.0) if args.fast else Pace(interval=1.0, pause=2.0)
    live = sys.stdout.isatty() and not args.plain
    tmp = Path(tempfile.mkdtemp(prefix="clawd-demo-"))
    demo = Demo(args, pace, Screen(live), tmp)
    demo.record(what="tmp", path=str(tmp))
    print(f"clawd demo: 5 simulated peers on loopback · demo dir {tmp}", flush=True)

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    interrupted: list[int] = []
    cleaning = False

    def on_signal(signum: int) -> None:
        if cleaning:
            print("(still cleaning up: a moment)", file=sys.stderr)
        elif not interrupted:
            interrupted.append(signum)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    started = time.monotonic()
    code = 0
    try:
        await story(demo)
    except asyncio.CancelledError:
        task.uncancel()  # handled: the cleanup below must not be cancelled again
        code = 128 + interrupted[0] if interrupted else 1
    except DemoError as exc:
        code = 1
        await demo.screen.detach()
        print(f"\ndemo failed: {exc}\n--- last lines of clawd.log ---", file=sys.stderr)
        print("\n".join(demo.log_text().splitlines()[-20:]), file=sys.stderr)
    finally:
        cleaning = True
        await demo.screen.detach()
        if interrupted:
            print(f"\ninterrupted ({signal.Signals(interrupted[0]).name}): cleaning up …")
        stopped = ", ".join(await demo.close()) or "nothing yet"
        if args.keep:
            print(f"\nstopped {stopped}; kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"\nstopped {stopped}; removed {tmp}")
    if code == 0:
        print(f"demo done in {time.monotonic() - started:.0f} s")
    return code


def main() -> int:
    return asyncio.run(amain(parse_args()))


if __name__ == "__main__":
    sys.exit(main())
