"""A fleet of real machines on one host, for tests that need several real clawd daemons.

Each :class:`Machine` is simulated by:

* its own loopback address (every 127.x.y.z answers on loopback),
* its own real OpenSSH ``sshd`` on that address (:class:`sshpeers.OpenSshServer`), logging in
  a unix user of its own (``clawfleet1``, ``clawfleet2``, ...) whose home holds
  ``~/.openclaw/claw-clan``, so the default install check passes and the leader's config
  pushes and fence files land in that machine's home only,
* its own ``clawd run`` (:class:`daemonproc.DaemonProcess`) with a home (``CLAW_HOME``) of
  its own, a client key of its own and a config.json listing the other machines as static
  peers (mDNS discovery off unless asked for), ``backend: postgres`` on one database shared
  by the whole fleet.

The daemons run as the test's user (root here), not as the machine's unix user: the venv's
Python lives under /root (mode 0700), which other users cannot run.

A power-off (:meth:`Fleet.power_off`) is SIGKILL of the machine's clawd and of every process
of its sshd: the listener and all its descendants (each open connection has processes of its
own that keep answering otherwise) and anything else its unix user still runs. It is checked
in /proc that none is left. :meth:`Fleet.power_on` brings sshd back on the same address, port
and host key, then a new clawd on the same home.

With a :class:`netns.Lab` (``lab=``), each machine is instead a network namespace of its
own (a lab node, ``m1``, ``m2``, ... at 10.77.0.N on the lab's bridge): its sshd listens on
the node's address, port 22, and its sshd and clawd run inside the namespace (``ip netns
exec``). The shared PostgreSQL stays in the root namespace; the daemons reach it through a
TCP -> unix-socket forwarder (tests/unixforward.py) running in a lab node of its own
(``db``), so they connect to ``db``'s address. The test process itself keeps working from
the root namespace: statuses over the daemons' control sockets (unix sockets, found by
path), the database over its usual address. :meth:`Fleet.split` and :meth:`Fleet.heal`
partition the fleet and join it again (:meth:`netns.Lab.split`). Only static peers.

Plain module (no pytest imports): :class:`Fleet` is an async context manager that always
kills every process it started, stops every sshd and drops the database it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import asyncpg
from daemonproc import DaemonProcess
from netns import Lab, Node
from pgserver import TEST_DB_PASSWORD, TEST_DB_USER, BasePg, PgDatabase, PgServer
from sshpeers import ClientKey, OpenSshServer, make_client_key
from unixforward import UnixForwarder

from clawd.serve.control import NoAnswer, request

__all__ = [
    "Fleet",
    "FleetTimings",
    "Machine",
    "MachineSpec",
    "NamespacedPgUnavailableError",
    "PeerSource",
    "StatusSample",
    "kill_machine_processes",
]

PeerSource = Literal["static", "mdns", "both"]

KILL_WAIT_SECONDS = 10.0
STATUS_WAIT_SECONDS = 10.0
LAB_SSH_PORT = 22  # each machine of a lab fleet has an address (a namespace) of its own
LAB_PG_PORT = 5432  # the forwarder's port on the lab's db node


class NamespacedPgUnavailableError(RuntimeError):
    """A fleet in a lab needs the test PostgreSQL's unix socket (a pg_ctl cluster)."""


def pg_unix_socket(pg: BasePg) -> Path:
    """The unix socket of `pg` (``<socket_dir>/.s.PGSQL.<port>``), which a forwarder in
    another network namespace can open by path; NamespacedPgUnavailableError when `pg`
    has none (an external DSN or a container: reachable only on its TCP address, from the
    root namespace)."""
    socket_dir = pg.socket_dir if isinstance(pg, PgServer) else None
    if socket_dir is None or socket_dir == Path():
        raise NamespacedPgUnavailableError(
            f"a fleet in network namespaces needs the test PostgreSQL's unix socket;"
            f" {pg.describe()} has none (a started pg_ctl cluster, tests/pgserver.py PgServer,"
            f" has one, an external DSN or a container has not: unset CLAW_TEST_PG_DSN and"
            f" CLAW_TEST_PG_BACKEND)"
        )
    path = socket_dir / f".s.PGSQL.{pg.port}"
    if not path.is_socket():
        raise NamespacedPgUnavailableError(f"{pg.describe()}: no unix socket at {path}")
    return path


@dataclass(frozen=True)
class FleetTimings:
    """Ping and SSH timings of every daemon (fast enough for tests)."""

    interval: float = 0.5
    timeout: float = 0.4  # below the interval, as config check requires
    offline_after_missed: int = 3
    connect_timeout: float = 1.0
    reconnect_initial: float = 0.2
    reconnect_max: float = 0.5


@dataclass(frozen=True)
class MachineSpec:
    gateway_id: str
    lead_number: int


@dataclass
class Machine:
    """One simulated machine: address, sshd, unix user, clawd home and (when on) clawd."""

    spec: MachineSpec
    address: str
    directory: Path  # everything of this machine that is not the unix user's home
    sshd: OpenSshServer
    client_key: ClientKey
    node: Node | None = None  # the lab node (network namespace) of a fleet in a lab
    daemon: DaemonProcess | None = None
    # Daemons that ran on this machine before a power-off or stop, newest last (their logs).
    past_daemons: list[DaemonProcess] = field(default_factory=list)

    @property
    def gateway_id(self) -> str:
        return self.spec.gateway_id

    @property
    def home(self) -> Path:
        """The clawd home (CLAW_HOME) of this machine's daemon."""
        return self.directory / "clawd-home"

    @property
    def config_path(self) -> Path:
        return self.home / "config.json"

    @property
    def user(self) -> pwd.struct_passwd:
        return self.sshd.account

    @property
    def prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a process on this machine (its namespace)."""
        return self.node.prefix if self.node is not None else ()

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.proc.poll() is None

    def logs(self) -> str:
        """Every log this machine's daemons wrote, oldest first."""
        daemons = [*self.past_daemons, *([self.daemon] if self.daemon else [])]
        for daemon in daemons:
            daemon.read()
        return "\n".join(d.log for d in daemons)


@dataclass(frozen=True)
class StatusSample:
    """One live status answer of one machine's daemon, with when it was taken."""

    gateway_id: str
    at: float  # time.monotonic()
    answer: dict[str, Any]

    @property
    def leader(self) -> str | None:
        value = self.answer.get("leader")
        return None if value is None else str(value)

    @property
    def epoch(self) -> int:
        return int(self.answer["epoch"])

    def peer_status(self, gateway_id: str) -> str | None:
        for row in self.answer.get("peers", []):
            if row["gatewayId"] == gateway_id:
                return str(row["status"])
        return None


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _pids_of_uid(uid: int) -> set[int]:
    found: set[int] = set()
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}").stat().st_uid == uid:
                found.add(pid)
    return found


def _tree(root: int) -> set[int]:
    """`root` and every descendant of it alive now."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in found or _proc_stat(pid) is None:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in {"Z", "X"}


def kill_machine_processes(listener: int | None, uid: int, timeout: float) -> set[int]:
    """SIGKILL the sshd `listener`, its descendants and every process of `uid`; the pids.

    Frozen first (SIGSTOP) until the set stops growing, so nothing forks or is reparented
    away from the tree between looking and killing. Raises when one is still alive (not a
    zombie) after `timeout`.
    """
    victims: set[int] = set()
    for _round in range(20):
        found = (_tree(listener) if listener is not None else set()) | _pids_of_uid(uid)
        found.discard(os.getpid())
        new = found - victims
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        victims |= new
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left: set[int] = set()
    while time.monotonic() < deadline:
        left = {pid for pid in victims if _alive(pid)}
        left |= {pid for pid in _pids_of_uid(uid) if _alive(pid)}
        if not left:
            return victims
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    raise AssertionError(f"still alive after SIGKILL: {sorted(left)}")


def _reset_claw_clan(account: pwd.struct_passwd) -> None:
    """A fresh ``~/.openclaw/claw-clan`` (installed, empty) owned by the machine's user."""
    home = Path(account.pw_dir)
    shutil.rmtree(home / ".openclaw", ignore_errors=True)
    target = home / ".openclaw" / "claw-clan"
    target.mkdir(parents=True)
    for path in (home / ".openclaw", target):
        os.chown(path, account.pw_uid, account.pw_gid)


# --------------------------------------------------------------------------- the fleet


class Fleet:
    """N machines sharing one PostgreSQL database (created here, dropped on exit)."""

    def __init__(
        self,
        root: Path,
        pg: BasePg,
        specs: Sequence[MachineSpec],
        *,
        timings: FleetTimings | None = None,
        address_prefix: str | None = None,
        user_prefix: str = "clawfleet",
        extra_config: dict[str, Any] | None = None,
        peers_from: PeerSource = "static",
        lab: Lab | None = None,
        follow_pushes: bool = False,
    ) -> None:
        if lab is not None and peers_from != "static":
            raise ValueError(
                f"peers_from={peers_from!r}: a fleet in a lab has static peers only (mDNS"
                " across the lab's namespaces is not set up by the harness)"
            )
        self.root = root.resolve()
        self.pg = pg
        self.specs = tuple(specs)
        self.timings = timings or FleetTimings()
        # A third octet of this run's own: helpers running in parallel use other addresses.
        self.address_prefix = address_prefix or f"127.0.{secrets.randbelow(150) + 100}"
        self.user_prefix = user_prefix
        self.extra_config = dict(extra_config or {})
        # "static": each config.json lists the other machines, mDNS off (lead numbers are
        # then each machine's own configuration of its peers); "mdns": no static peers, the
        # daemons announce themselves (lead number included) and find each other over mDNS
        # on loopback, on a service type of this fleet's own; "both": static peers and mDNS.
        self.peers_from = peers_from
        self.service_type = f"_f{secrets.token_hex(4)}._tcp.local."
        # With a lab: every machine a namespace of its own, PostgreSQL through a forwarder
        # on the lab node `db_node` (the daemons' postgres.host/port).
        self.lab = lab
        # The config.json the leader pushes lands in the login's ~/.openclaw/claw-clan; on a
        # real machine that is clawd's home. With `follow_pushes` each machine's config is
        # kept there too and what the leader pushes is copied to the daemon's home (which
        # reloads it), as the seed's backend switch of a whole fleet goes.
        self.follow_pushes = follow_pushes
        self._pushed: dict[str, bytes] = {}
        self.db_node: Node | None = None
        self.forwarder: UnixForwarder | None = None
        self.db: PgDatabase | None = None
        self.machines: dict[str, Machine] = {}
        self._pump: asyncio.Task[None] | None = None

    # -- set-up and tear-down

    async def __aenter__(self) -> Fleet:
        try:
            await asyncio.to_thread(self._create_database)
            if self.lab is not None:
                await asyncio.to_thread(self._start_forwarder, self.lab)
            await asyncio.to_thread(self._make_machines)
        except BaseException:
            await self.close()
            raise
        self._pump = asyncio.create_task(self._read_logs(), name="fleet-log-pump")
        return self

    async def _read_logs(self) -> None:
        # A daemon whose stderr pipe is full blocks on its next log line: keep them drained.
        while True:
            for machine in self.machines.values():
                if machine.daemon is not None:
                    # A daemon being stopped in a thread closes its pipe meanwhile.
                    with contextlib.suppress(OSError, ValueError):
                        machine.daemon.read()
            await asyncio.to_thread(self._mirror_identities)
            await asyncio.sleep(0.2)

    def _mirror_identities(self) -> None:
        """Each machine's state.json where its peers read it over SSH.

        On a real machine clawd's home is the login's ~/.openclaw/claw-clan; here the home
        is elsewhere (the daemon runs as root), so its state.json is copied there, as long
        as claw-clan is installed (a test that removes it means it).
        """
        for machine in self.machines.values():
            if self.follow_pushes:
                self._follow_push(machine)
            source = machine.home / "state.json"
            target = Path(machine.user.pw_dir) / ".openclaw" / "claw-clan" / "state.json"
            with contextlib.suppress(OSError):
                data = source.read_bytes()
                if target.parent.is_dir() and (not target.exists() or target.read_bytes() != data):
                    tmp = target.with_name(".state.json.mirror")
                    tmp.write_bytes(data)
                    os.chown(tmp, machine.user.pw_uid, machine.user.pw_gid)
                    tmp.replace(target)

    def _login_config(self, machine: Machine) -> Path:
        return Path(machine.user.pw_dir) / ".openclaw" / "claw-clan" / "config.json"

    def _follow_push(self, machine: Machine) -> None:
        """A config.json the leader pushed to the machine's login: into the daemon's home."""
        with contextlib.suppress(OSError):
            data = self._login_config(machine).read_bytes()
            if data != self._pushed.get(machine.gateway_id):
                self._pushed[machine.gateway_id] = data
                tmp = machine.config_path.with_name(".config.json.pushed")
                tmp.write_bytes(data)
                tmp.chmod(0o600)
                tmp.replace(machine.config_path)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _create_database(self) -> None:
        self.pg.create_role(TEST_DB_USER, TEST_DB_PASSWORD)
        name = f"claw_fleet_{secrets.token_hex(8)}"
        self.pg.create_database(name, owner=TEST_DB_USER)
        self.db = self.pg.database(name, TEST_DB_USER, TEST_DB_PASSWORD)

    def _start_forwarder(self, lab: Lab) -> None:
        """PostgreSQL's unix socket served on a lab node of its own, for the daemons."""
        socket_path = pg_unix_socket(self.pg)
        self.db_node = lab.add("db")
        self.root.mkdir(parents=True, exist_ok=True)
        self.forwarder = UnixForwarder(
            self.db_node.ip,
            LAB_PG_PORT,
            socket_path,
            prefix=self.db_node.prefix,
            log=self.root / "unixforward.log",
        )
        self.forwarder.start()

    def _make_machines(self) -> None:
        keys = {}
        for spec in self.specs:
            directory = self.root / f"machine-{spec.gateway_id}"
            (directory / "sshd").mkdir(parents=True)
            keys[spec.gateway_id] = make_client_key(directory, "id_ed25519")
        authorized = [key.public_line for key in keys.values()]
        for n, spec in enumerate(self.specs, start=1):
            directory = self.root / f"machine-{spec.gateway_id}"
            # In a lab: a namespace of its own (short role names: namespace "cw<tag>m<n>").
            node = self.lab.add(f"m{n}") if self.lab is not None else None
            sshd = OpenSshServer(
                directory / "sshd",
                [node.ip if node is not None else f"{self.address_prefix}.{n}"],
                authorized,
                port=LAB_SSH_PORT if node is not None else None,
                user=f"{self.user_prefix}{n}",
                prefix=node.prefix if node is not None else (),
                # The leader pushes config.json and fence files over SFTP.
                extra_config=["Subsystem sftp internal-sftp"],
            )
            _reset_claw_clan(sshd.account)
            self.machines[spec.gateway_id] = Machine(
                spec, sshd.addresses[0], directory, sshd, keys[spec.gateway_id], node
            )
        for machine in self.machines.values():
            machine.sshd.start()  # picks the port kept for every later start
        known_hosts = "".join(m.sshd.known_hosts_text() for m in self.machines.values())
        for machine in self.machines.values():
            machine.home.mkdir(mode=0o700)
            (machine.directory / "known_hosts").write_text(known_hosts)
            self.write_config(machine.gateway_id, self.config_for(machine.gateway_id))

    async def close(self) -> None:
        """Kill every daemon, stop every sshd, drop the database: never raises half-way."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        for machine in self.machines.values():
            if machine.daemon is not None:
                with contextlib.suppress(Exception):
                    machine.daemon.stop(signal.SIGKILL, timeout=10)
                machine.past_daemons.append(machine.daemon)
                machine.daemon = None
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._kill_sshd, machine)
            with contextlib.suppress(Exception):
                machine.sshd.stop()
            # What the leader pushed there (config.json, fence files): gone with the fleet.
            shutil.rmtree(Path(machine.user.pw_dir) / ".openclaw", ignore_errors=True)
        if self.forwarder is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.forwarder.stop)
            self.forwarder = None
        if self.db is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.pg.drop_database, self.db.database)
            self.db = None

    # -- configuration

    def config_for(self, gateway_id: str) -> dict[str, Any]:
        """The config.json this fleet gives machine `gateway_id` (edit it, then write it)."""
        assert self.db is not None
        me = self.machines[gateway_id]
        t = self.timings
        # In a lab the daemons reach PostgreSQL through the forwarder on the db node.
        pg_host, pg_port = self.db.host, self.db.port
        if self.forwarder is not None:
            pg_host, pg_port = self.forwarder.host, self.forwarder.port
        config: dict[str, Any] = {
            "backend": "postgres",
            "postgres": {
                "host": pg_host,
                "port": pg_port,
                "database": self.db.database,
                "user": self.db.user,
                "password": self.db.password,
                "poolMin": 1,
                "poolMax": 2,
                "connectTimeoutSeconds": 5,
            },
            "storage": {"flushIntervalSeconds": 0.1},
            "instance": {
                "gatewayId": me.gateway_id,
                "name": f"machine-{me.gateway_id}",
                "leadNumber": me.spec.lead_number,
                "ip": me.address,
                "sshPort": me.sshd.port,
                "sshUser": me.sshd.user,
            },
            "peers": [
                {
                    "name": f"machine-{m.gateway_id}",
                    "gatewayId": m.gateway_id,
                    "ip": m.address,
                    "sshPort": m.sshd.port,
                    "sshUser": m.sshd.user,
                    "leadNumber": m.spec.lead_number,
                }
                for m in self.machines.values()
                if m is not me and self.peers_from != "mdns"
            ],
            "ping": {
                "intervalSeconds": t.interval,
                "timeoutSeconds": t.timeout,
                "offlineAfterMissed": t.offline_after_missed,
            },
            "detection": {"indirectProbes": 0},
            "ssh": {
                "knownHosts": str(me.directory / "known_hosts"),
                "clientKeys": [str(me.client_key.path)],
                "connectTimeoutSeconds": t.connect_timeout,
                "reconnectInitialSeconds": t.reconnect_initial,
                "reconnectMaxSeconds": t.reconnect_max,
            },
            "discovery": {"enabled": False}
            if self.peers_from == "static"
            else {"interfaces": ["127.0.0.1"], "serviceType": self.service_type},
            "skills": {"syncInterval": "off"},
        }
        config.update(self.extra_config)
        return config

    def read_config(self, gateway_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.machines[gateway_id].config_path.read_text())
        return data

    def write_config(self, gateway_id: str, config: dict[str, Any]) -> None:
        """As editors do: a new file renamed over the old one (the daemon reloads it)."""
        path = self.machines[gateway_id].config_path
        tmp = path.with_name(".config.json.swp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
        machine = self.machines[gateway_id]
        login = self._login_config(machine)
        if self.follow_pushes and login.parent.is_dir():
            # The same file where the leader finds (and keeps) the machine's own part.
            data = path.read_bytes()
            self._pushed[gateway_id] = data
            tmp = login.with_name(".config.json.swp")
            tmp.write_bytes(data)
            os.chown(tmp, machine.user.pw_uid, machine.user.pw_gid)
            tmp.chmod(0o600)
            tmp.replace(login)

    def edit_config(self, gateway_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
        """Read machine `gateway_id`'s config.json, let `edit` change it, write it back."""
        config = self.read_config(gateway_id)
        edit(config)
        self.write_config(gateway_id, config)

    # -- daemons

    def start_daemon(self, gateway_id: str) -> DaemonProcess:
        machine = self.machines[gateway_id]
        if machine.running:
            raise RuntimeError(f"{gateway_id}: clawd already runs")
        if machine.daemon is not None:
            machine.past_daemons.append(machine.daemon)
        machine.daemon = DaemonProcess(machine.home, prefix=machine.prefix)
        return machine.daemon

    async def start_all(self, ready_timeout: float = 30.0) -> None:
        """Start every stopped daemon at once, then wait until each logged it is ready."""
        started = [self.start_daemon(m.gateway_id) for m in self.machines.values() if not m.running]
        for daemon in started:
            await daemon.await_log("event=ready", ready_timeout)

    def _detach(self, gateway_id: str) -> DaemonProcess:
        """The machine's daemon, no longer its current one (its log is kept)."""
        machine = self.machines[gateway_id]
        daemon, machine.daemon = machine.daemon, None
        assert daemon is not None, f"{gateway_id}: no clawd"
        machine.past_daemons.append(daemon)
        return daemon

    async def stop_daemon(self, gateway_id: str, timeout: float = 15.0) -> int:
        """SIGTERM, as an operator stops it; the exit code."""
        daemon = self._detach(gateway_id)
        return await asyncio.to_thread(daemon.stop, signal.SIGTERM, timeout)

    async def stop_all(self, timeout: float = 15.0) -> dict[str, int]:
        """SIGTERM to every daemon at once; their exit codes."""
        running = [m.gateway_id for m in self.machines.values() if m.daemon is not None]
        codes = await asyncio.gather(*(self.stop_daemon(g, timeout) for g in running))
        return dict(zip(running, codes, strict=True))

    # -- power

    def _kill_sshd(self, machine: Machine) -> set[int]:
        pid_file = machine.sshd.directory / "sshd.pid"
        listener: int | None = None
        with contextlib.suppress(OSError, ValueError):
            listener = int(pid_file.read_text().split()[0])
        return kill_machine_processes(listener, machine.user.pw_uid, KILL_WAIT_SECONDS)

    async def power_off(self, gateway_id: str) -> set[int]:
        """Pull the plug: SIGKILL clawd, sshd's listener and all its descendants and every
        process of the machine's user; verified in /proc. The sshd pids killed."""
        machine = self.machines[gateway_id]
        if machine.daemon is not None:
            daemon = self._detach(gateway_id)
            await asyncio.to_thread(daemon.stop, signal.SIGKILL, 10)
        killed = await asyncio.to_thread(self._kill_sshd, machine)
        machine.sshd.stop()  # reaps the listener, removes its authorized_keys file
        left = [pid for pid in killed if _alive(pid)]
        assert not left, f"{gateway_id}: processes survived the power-off: {left}"
        return killed

    async def power_on(self, gateway_id: str, ready_timeout: float = 30.0) -> DaemonProcess:
        """sshd back on the same address, port and host key; then a new clawd, ready."""
        machine = self.machines[gateway_id]
        await asyncio.to_thread(machine.sshd.start)
        daemon = self.start_daemon(gateway_id)
        await daemon.await_log("event=ready", ready_timeout)
        return daemon

    def sshd_pids(self, gateway_id: str) -> set[int]:
        """The machine's sshd listener and descendants, and its user's processes, alive."""
        machine = self.machines[gateway_id]
        listener: int | None = None
        with contextlib.suppress(OSError, ValueError):
            listener = int((machine.sshd.directory / "sshd.pid").read_text().split()[0])
        found = _tree(listener) if listener is not None and _alive(listener) else set()
        return {p for p in found | _pids_of_uid(machine.user.pw_uid) if _alive(p)}

    # -- network (a fleet in a lab)

    def node(self, gateway_id: str) -> Node:
        """The lab node (network namespace, address, switch port) of machine `gateway_id`."""
        node = self.machines[gateway_id].node
        if node is None:
            raise RuntimeError("not a fleet in a lab: Fleet(..., lab=Lab()) has nodes")
        return node

    def _lab(self) -> Lab:
        if self.lab is None:
            raise RuntimeError("not a fleet in a lab: Fleet(..., lab=Lab()) can be split")
        return self.lab

    def split(self, gateway_ids: Sequence[str]) -> None:
        """Partition the fleet: machines `gateway_ids` on one side, every other machine and
        the database (the db node) on the other. Each side still reaches itself; TCP
        connections across the cut stall. Replaces an earlier split."""
        self._lab().split([self.node(g) for g in gateway_ids])

    def heal(self) -> None:
        """The whole fleet (and the database) on one network again."""
        self._lab().heal()

    # -- status

    async def status(self, gateway_id: str) -> StatusSample:
        """The live status of a machine's daemon over its control socket (what
        ``clawd status --json`` prints, without starting a process)."""
        machine = self.machines[gateway_id]
        assert machine.daemon is not None, f"{gateway_id}: no clawd"
        machine.daemon.read()
        assert machine.daemon.proc.poll() is None, f"{gateway_id}: clawd exited:\n{machine.logs()}"
        answer = await request(machine.home, "status", wait_seconds=STATUS_WAIT_SECONDS)
        assert answer.get("ok"), answer
        return StatusSample(gateway_id, time.monotonic(), answer)

    async def status_cli(self, gateway_id: str) -> StatusSample:
        """``clawd status --json --live`` of a machine, run as a user would."""
        home = self.machines[gateway_id].home
        env = dict(os.environ, CLAW_HOME=str(home))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clawd.cli.main",
            "status",
            "--json",
            "--live",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, f"{gateway_id}: status exit {proc.returncode}: {err!r}"
        answer: dict[str, Any] = json.loads(out)
        assert answer.get("live") is True, answer
        return StatusSample(gateway_id, time.monotonic(), answer)

    async def statuses(self, gateway_ids: Sequence[str] | None = None) -> list[StatusSample]:
        """One live status of each running machine (or of `gateway_ids`), concurrently."""
        wanted = gateway_ids or [m.gateway_id for m in self.machines.values() if m.running]
        return list(await asyncio.gather(*(self.status(g) for g in wanted)))

    async def until(
        self,
        check: Callable[[list[StatusSample]], bool],
        timeout: float,
        *,
        gateway_ids: Sequence[str] | None = None,
        poll: float = 0.1,
        samples: list[StatusSample] | None = None,
    ) -> tuple[list[StatusSample], float]:
        """Poll the statuses of the running machines (or `gateway_ids`) until `check`
        holds for one round of them; that round and the seconds it took. Every sample taken
        is appended to `samples` when given (to check epochs over time)."""
        started = time.monotonic()
        last: list[StatusSample] = []
        for _ in range(int(timeout / poll) + 1):
            with contextlib.suppress(NoAnswer):
                last = await self.statuses(gateway_ids)
                if samples is not None:
                    samples.extend(last)
                if check(last):
                    return last, time.monotonic() - started
            if time.monotonic() - started >= timeout:
                break
            await asyncio.sleep(poll)
        shown = {s.gateway_id: (s.leader, s.epoch, s.answer.get("peers")) for s in last}
        raise AssertionError(f"statuses never matched within {timeout} s: {shown}")

    def read_store_leader(self, gateway_id: str) -> str | None:
        """The leader in machine `gateway_id`'s store (its fleet.json), as the next start
        finds it."""
        path = self.machines[gateway_id].home / "fleet.json"
        leader = json.loads(path.read_text()).get("leader")
        return None if leader is None else str(leader)

    def log_digest(self, skip: Sequence[str] = ("event=ping", "event=config_pushed")) -> str:
        """Every machine's daemon logs, without the lines of the routine events in `skip`
        (for a failing test's report)."""
        parts = []
        for machine in self.machines.values():
            lines = [ln for ln in machine.logs().splitlines() if not any(k in ln for k in skip)]
            parts.append(f"===== {machine.gateway_id}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- incidents

    def incidents(self, gateway_id: str, event: str | None = None) -> list[dict[str, Any]]:
        """The incidents machine `gateway_id`'s daemon recorded itself (its incidents.jsonl:
        the JSON files are always written, and the shared database does not say which
        machine observed an incident)."""
        path = self.machines[gateway_id].home / "incidents.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if event is None or r["eventType"] == event]

    async def db_fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one query on the shared database, on a connection of its own."""
        assert self.db is not None
        conn = await asyncpg.connect(self.db.dsn, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close(timeout=5)

    async def db_incidents(self, event: str | None = None) -> list[dict[str, Any]]:
        """Every incident in the shared database (all observers together), oldest first."""
        rows = await self.db_fetch(
            "SELECT gateway_id, event_type, details, timestamp FROM incident_log"
            " WHERE $1::text IS NULL OR event_type = $1 ORDER BY timestamp, id",
            event,
        )
        return [
            {
                "gatewayId": r["gateway_id"],
                "eventType": r["event_type"],
                "details": json.loads(r["details"]) if r["details"] else None,
                "timestamp": r["timestamp"].isoformat(),
            }
            for r in rows
        ]

    async def wait_for(
        self, predicate: Callable[[], Awaitable[bool]], timeout: float, poll: float = 0.1
    ) -> float:
        """Seconds until `predicate()` holds; AssertionError after `timeout`."""
        started = time.monotonic()
        for _ in range(int(timeout / poll) + 1):
            if await predicate():
                return time.monotonic() - started
            if time.monotonic() - started >= timeout:
                break
            await asyncio.sleep(poll)
        raise AssertionError(f"not within {timeout} s")


@contextlib.asynccontextmanager
async def fleet_of(
    root: Path,
    pg: BasePg,
    specs: Sequence[MachineSpec],
    *,
    timings: FleetTimings | None = None,
    extra_config: dict[str, Any] | None = None,
    peers_from: PeerSource = "static",
    lab: Lab | None = None,
    user_prefix: str = "clawfleet",
    follow_pushes: bool = False,
) -> AsyncIterator[Fleet]:
    """A fleet, set up (in `lab`'s namespaces when given); its log digest printed on the
    way out (pytest shows it when the test failed)."""
    async with Fleet(
        root,
        pg,
        specs,
        timings=timings,
        extra_config=extra_config,
        peers_from=peers_from,
        lab=lab,
        user_prefix=user_prefix,
        follow_pushes=follow_pushes,
    ) as fleet:
        try:
            yield fleet
        finally:
            print(fleet.log_digest())
