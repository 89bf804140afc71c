"""Real SSH servers on loopback for the pinger tests and benchmarks.

Every 127.x.y.z address answers on loopback, so each simulated peer gets an address of its own:

* :class:`SshFleet` -- asyncssh servers, one :class:`SshPeer` per address, in this process. A
  peer runs ``cat`` (the pinger's echo channel) and the install-check command (exit 0 when
  ``installed``), and can be stopped and started again, slowed down, or given a new host key.
  The fleet counts handshakes and can refuse connections beyond ``max_startups`` concurrent
  unauthenticated ones, as OpenSSH's ``MaxStartups`` does.
* :class:`SilentPeer` -- accepts TCP and never says a word (an SSH handshake that hangs).
* :class:`OpenSshServer` -- a private OpenSSH ``sshd`` on 127.0.0.x, logging in an
  unprivileged test user with ``/bin/sh`` (never root: root's shell start-up here is slow).

Plain module (no pytest imports) so benchmarks can use it; ``python tests/sshpeers.py serve``
runs a fleet in its own process for benchmarks that must not count the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

from clawd.sources.identity import identity_command

__all__ = [
    "DEFAULT_INSTALL_CHECK",
    "SSHD_MAX_ADDRESSES",
    "TEST_SSH_USER",
    "ClientKey",
    "OpenSshServer",
    "SilentPeer",
    "SshFleet",
    "SshPeer",
    "make_client_key",
    "silent_peer",
    "sshd_path",
]

DEFAULT_INSTALL_CHECK = "test -d ~/.openclaw/claw-clan"
IDENTITY_FILE = ".openclaw/claw-clan/state.json"  # ssh.identityFile's default
SSHD_MAX_ADDRESSES = 16  # sshd's MAX_LISTEN_SOCKS: start several servers for more
TEST_SSH_USER = "clawtest"  # unprivileged login for the OpenSSH server (created when root)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class ClientKey:
    """A generated client key pair; ``path`` is the private key file (mode 0600)."""

    path: Path
    key: asyncssh.SSHKey

    @property
    def public_line(self) -> str:
        return self.key.export_public_key("openssh").decode().strip()


def make_client_key(directory: Path, name: str = "id_ed25519") -> ClientKey:
    """Generate an ed25519 client key and write it (OpenSSH format) under ``directory``."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="clawd-test")
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key("openssh"))
    (directory / f"{name}.pub").write_text(key.export_public_key("openssh").decode())
    return ClientKey(path, key)


def new_host_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


# --------------------------------------------------------------------------- asyncssh peers


@dataclass
class FleetCounters:
    """What the servers saw, summed over the fleet."""

    accepted: int = 0  # TCP connections taken
    authenticated: int = 0
    refused: int = 0  # dropped because max_startups handshakes were already under way
    handshaking: int = 0  # unauthenticated connections right now
    peak_handshaking: int = 0
    sessions: int = 0  # channels opened (echo + exec)
    peak_channels_per_connection: int = 0
    execs: dict[str, int] = field(default_factory=dict)  # command -> count


class _PeerServer(asyncssh.SSHServer):
    """Counts one connection's handshake; refuses it beyond the fleet's max_startups."""

    def __init__(self, peer: SshPeer) -> None:
        self._peer = peer
        self._conn: asyncssh.SSHServerConnection | None = None
        self._handshaking = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        counters = self._peer.fleet.counters
        counters.accepted += 1
        limit = self._peer.fleet.max_startups
        if limit is not None and counters.handshaking >= limit:
            counters.refused += 1
            conn.abort()
            return
        self._conn = conn
        self._handshaking = True
        counters.handshaking += 1
        counters.peak_handshaking = max(counters.peak_handshaking, counters.handshaking)
        self._peer.connections.add(conn)

    def _done_handshaking(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self._peer.fleet.counters.handshaking -= 1

    def auth_completed(self) -> None:
        self._done_handshaking()
        self._peer.fleet.counters.authenticated += 1
        self._peer.authenticated += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._done_handshaking()
        if self._conn is not None:
            self._peer.connections.discard(self._conn)


class SshPeer:
    """One asyncssh server on ``address``: echo (``cat``) and the install check."""

    def __init__(
        self,
        fleet: SshFleet,
        address: str,
        *,
        installed: bool = True,
        port: int = 0,
        root: Path | None = None,
    ) -> None:
        self.fleet = fleet
        self.address = address
        # With a root: a real home directory, served over SFTP (chrooted) and used as
        # HOME for commands, which run in /bin/sh; the install check looks there.
        self.root = root
        self.port = port  # 0 until the first start() picks a free one, then kept
        self.installed = installed
        # Who this peer says it is in its state.json (read by clawd's identity check):
        # None = no state.json, so clawd never counts it as verified.
        self.identity: dict[str, Any] | None = None
        self.echo_delay = 0.0  # seconds each echoed chunk is held back
        self.host_key = new_host_key()
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.authenticated = 0
        self.echoes_pending = 0  # echo bytes read and not yet written back
        self._open_channels: dict[object, int] = {}  # connection -> open channels
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def running(self) -> bool:
        return self._acceptor is not None

    def claim(self, gateway_id: str, lead_number: int | None = None) -> SshPeer:
        """Hold this identity in the peer's state.json (in its home, if it has one)."""
        self.identity = {"gatewayId": gateway_id, "leadNumber": lead_number}
        if self.root is not None:
            path = self.root / IDENTITY_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.identity))
        return self

    def _state_json(self) -> bytes:
        if self.root is not None:
            path = self.root / IDENTITY_FILE
            return path.read_bytes() if path.is_file() else b""
        return json.dumps(self.identity).encode() if self.identity is not None else b""

    @property
    def host_key_line(self) -> str:
        """The public host key in OpenSSH format (``ssh-ed25519 AAAA…``)."""
        return self.host_key.export_public_key("openssh").decode().strip()

    async def start(self) -> None:
        if self._acceptor is not None:
            return
        self._acceptor = await asyncssh.listen(
            self.address,
            self.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=self.fleet.authorized_keys,
            server_factory=lambda: _PeerServer(self),
            process_factory=self._handle,
            encoding=None,
            allow_scp=False,
            sftp_factory=self._sftp_factory(),
            agent_forwarding=False,
            x11_forwarding=False,
            config=None,
        )
        self.port = self._acceptor.get_port()

    def _sftp_factory(self) -> Any:
        root = self.root or self.fleet.shared_sftp_root
        if root is None:
            return None
        return lambda chan: asyncssh.SFTPServer(chan, chroot=str(root).encode())

    async def stop(self) -> None:
        """Close the listener and drop every open connection (the peer went down)."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
            await acceptor.wait_closed()
        await self.drop_connections()

    async def drop_connections(self) -> None:
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        for conn in conns:
            await conn.wait_closed()

    async def change_host_key(self) -> asyncssh.SSHKey:
        """A new host key for every later connection; open connections are dropped."""
        self.host_key = new_host_key()
        if self.running:
            await self.stop()
            await self.start()
        return self.host_key

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        counters = self.fleet.counters
        counters.sessions += 1
        command = process.command or ""
        counters.execs[command] = counters.execs.get(command, 0) + 1
        conn = process.channel.get_connection()
        open_now = self._open_channels.get(conn, 0) + 1
        self._open_channels[conn] = open_now
        counters.peak_channels_per_connection = max(counters.peak_channels_per_connection, open_now)
        try:
            await self._run(process, command)
        finally:
            self._open_channels[conn] -= 1
            if not self._open_channels[conn]:
                del self._open_channels[conn]

    async def _run(self, process: asyncssh.SSHServerProcess[bytes], command: str) -> None:
        try:
            if command == "cat":
                await self._echo(process)
                process.exit(0)
            elif (
                self.root is not None
                and self.fleet.native_install_check
                and (command in (self.fleet.install_check_command, self.fleet.identity_command))
            ):
                if command == self.fleet.identity_command:
                    process.stdout.write(self._state_json())
                process.exit(0 if (self.root / ".openclaw" / "claw-clan").is_dir() else 1)
            elif self.root is not None:
                process.exit(await self._shell(process, command))
            elif command == self.fleet.install_check_command:
                process.exit(0 if self.installed else 1)
            elif command == self.fleet.identity_command:
                process.stdout.write(self._state_json())
                process.exit(0 if self.installed else 1)
            elif command == "true":
                process.exit(0)
            else:
                process.stderr.write(f"sh: {command}: not found\n".encode())
                process.exit(127)
        except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, ConnectionError):
            process.close()

    async def _shell(self, process: asyncssh.SSHServerProcess[bytes], command: str) -> int:
        assert self.root is not None
        env = {"HOME": str(self.root), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=self.root,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a process group of its own: killed as one below
        )
        output = asyncio.ensure_future(proc.communicate())
        closed = asyncio.ensure_future(process.channel.wait_closed())
        try:
            # As sshd does: the command dies with its session. Without this a hung
            # helper would outlive the client that gave up on it (and the test).
            await asyncio.wait({output, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not output.done():
                raise ConnectionError("the SSH session closed while its command ran")
            out, err = output.result()
        finally:
            closed.cancel()
            if not output.done():  # the session closed or this handler was cancelled
                _kill_group(proc.pid)
                output.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
        process.stdout.write(out)
        process.stderr.write(err)
        return proc.returncode if proc.returncode is not None and proc.returncode >= 0 else 255

    async def _echo(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        while True:
            data = await process.stdin.read(4096)
            if not data:
                return
            self.echoes_pending += 1
            try:
                if self.echo_delay:
                    await asyncio.sleep(self.echo_delay)
                process.stdout.write(data)
            finally:
                self.echoes_pending -= 1


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class SshFleet:
    """Many asyncssh peers on loopback addresses, one client key; an async context manager."""

    def __init__(
        self,
        directory: Path,
        *,
        install_check_command: str = DEFAULT_INSTALL_CHECK,
        max_startups: int | None = None,
    ) -> None:
        self.directory = directory
        self.install_check_command = install_check_command
        # What clawd runs for its install check: the check and a read of state.json.
        self.identity_command = identity_command(install_check_command, IDENTITY_FILE)
        self.max_startups = max_startups
        self.client_key = make_client_key(directory)
        self.authorized_keys = asyncssh.import_authorized_keys(self.client_key.public_line + "\n")
        self.counters = FleetCounters()
        self.peers: dict[str, SshPeer] = {}
        self._silent: list[SilentPeer] = []
        # SFTP for every peer without a root of its own, all into this one folder
        # (benchmarks: config pushes land somewhere, commands keep their canned answers).
        self.shared_sftp_root: Path | None = None
        # Answer the install check in-process even for peers with a home (benchmarks: a
        # shell per check for 1,000 peers would load the server, not the daemon).
        self.native_install_check = False

    async def add_peer(
        self,
        address: str,
        *,
        installed: bool = True,
        start: bool = True,
        root: Path | None = None,
    ) -> SshPeer:
        peer = SshPeer(self, address, installed=installed, root=root)
        self.peers[address] = peer
        if start:
            await peer.start()
        return peer

    async def add_peers(self, addresses: Sequence[str]) -> list[SshPeer]:
        return [await self.add_peer(address) for address in addresses]

    async def add_silent_peer(self, address: str) -> SilentPeer:
        peer = SilentPeer(address)
        await peer.start()
        self._silent.append(peer)
        return peer

    def known_hosts_text(self) -> str:
        """known_hosts lines trusting every peer's current host key."""
        return "".join(
            f"[{p.address}]:{p.port} {p.host_key_line}\n" for p in self.peers.values() if p.port
        )

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.stop()
        for silent in self._silent:
            await silent.stop()

    async def __aenter__(self) -> SshFleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SilentPeer:
    """A TCP listener that accepts and never answers: SSH handshakes to it hang."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.address = address
        self.port = port
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()


@contextlib.asynccontextmanager
async def silent_peer(address: str) -> AsyncIterator[SilentPeer]:
    peer = SilentPeer(address)
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


# --------------------------------------------------------------------------- OpenSSH


def sshd_path() -> Path | None:
    """The OpenSSH server binary, or None (``apt-get install -y openssh-server``)."""
    found = shutil.which("sshd") or "/usr/sbin/sshd"
    return Path(found) if Path(found).is_file() else None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _answers_ssh(host: str, port: int) -> bool:
    """True once host:port sends an SSH banner."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1) as sock:
        return sock.recv(64).startswith(b"SSH-")
    return False


def ensure_test_user(name: str = TEST_SSH_USER) -> pwd.struct_passwd:
    """The unprivileged login the OpenSSH server accepts; created (``/bin/sh``) when root.

    Without root, the current user logs in (sshd then runs as that user).
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
    # With UsePAM no, sshd refuses an account whose password is locked ('!'); '*' is not.
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return pwd.getpwnam(name)


class OpenSshServer:
    """A private OpenSSH ``sshd`` on loopback addresses and one port.

    Logs in ``user`` (an unprivileged account) with the given public keys, written to a
    per-server file in that user's ``~/.ssh``, removed again by :meth:`stop`.
    """

    def __init__(
        self,
        directory: Path,
        addresses: Sequence[str],
        authorized_keys: Sequence[str],
        *,
        port: int | None = None,
        extra_config: Sequence[str] = (),
        user: str = TEST_SSH_USER,
        prefix: Sequence[str] = (),
    ) -> None:
        if not 1 <= len(addresses) <= SSHD_MAX_ADDRESSES:
            raise ValueError(f"one sshd listens on 1 to {SSHD_MAX_ADDRESSES} addresses")
        binary = sshd_path()
        if binary is None:
            raise RuntimeError("OpenSSH server not found: apt-get install -y openssh-server")
        self.binary = binary
        self.directory = directory.resolve()
        self.addresses = tuple(addresses)
        self.authorized_keys = tuple(authorized_keys)
        self.port = port or 0
        self.extra_config = tuple(extra_config)
        self.account = ensure_test_user(user)
        # A command prefix such as ("ip", "netns", "exec", NS): sshd runs (and is probed)
        # inside that network namespace; it then needs an explicit port.
        self.prefix = tuple(prefix)
        if self.prefix and not port:
            raise ValueError("an sshd started through a prefix needs an explicit port")
        self.user = self.account.pw_name
        self._token = secrets.token_hex(4)
        self._keys_name = f"authorized_keys_clawd_test_{self._token}"
        self._process: subprocess.Popen[bytes] | None = None
        self.host_key = new_host_key()

    @property
    def host_key_line(self) -> str:
        return self.host_key.export_public_key("openssh").decode().strip()

    def known_hosts_text(self) -> str:
        # As OpenSSH (and asyncssh) write and look them up: port 22 is the bare address.
        hosts = [a if self.port == 22 else f"[{a}]:{self.port}" for a in self.addresses]
        return "".join(f"{host} {self.host_key_line}\n" for host in hosts)

    @property
    def _keys_path(self) -> Path:
        return Path(self.account.pw_dir) / ".ssh" / self._keys_name

    def _write_authorized_keys(self) -> None:
        ssh_dir = self._keys_path.parent
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        self._keys_path.write_text("".join(f"{line}\n" for line in self.authorized_keys))
        self._keys_path.chmod(0o600)
        if os.geteuid() == 0:
            for path in (ssh_dir, self._keys_path):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _write_config(self) -> Path:
        host_key_path = self.directory / "ssh_host_ed25519_key"
        host_key_path.write_bytes(self.host_key.export_private_key("openssh"))
        host_key_path.chmod(0o600)
        lines = [
            f"Port {self.port}",
            *(f"ListenAddress {address}" for address in self.addresses),
            f"HostKey {host_key_path}",
            f"PidFile {self.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile .ssh/{self._keys_name}",
            f"AllowUsers {self.user}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PrintMotd no",
            "LogLevel ERROR",
            *self.extra_config,
        ]
        path = self.directory / "sshd_config"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 10.0) -> None:
        """Start sshd (blocking; from async code run it with ``asyncio.to_thread``)."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self._write_authorized_keys()
        explicit_port = self.port
        for _attempt in range(5):
            self.port = explicit_port or _free_port(self.addresses[0])
            config = self._write_config()  # absolute -f path: sshd re-executes itself
            log = (self.directory / "sshd.log").open("ab")
            self._process = subprocess.Popen(
                [*self.prefix, str(self.binary), "-D", "-e", "-f", str(config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._process.poll() is None:
                # sshd binds every ListenAddress before it accepts; probing one is enough
                # (each probe is an unauthenticated connection counted by MaxStartups).
                if self._answers():
                    return
                time.sleep(0.05)
            self._kill()
            if explicit_port:
                break
        self._keys_path.unlink(missing_ok=True)
        raise RuntimeError(f"sshd did not start; log:\n{self.log_tail()}")

    def _answers(self) -> bool:
        if not self.prefix:
            return _answers_ssh(self.addresses[0], self.port)
        probe = (
            "import socket,sys\n"
            f"s=socket.create_connection(({self.addresses[0]!r},{self.port}),timeout=1)\n"
            "sys.exit(0 if s.recv(64).startswith(b'SSH-') else 1)"
        )
        done = subprocess.run(
            [*self.prefix, sys.executable, "-c", probe],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.returncode == 0

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "sshd.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the listener (children serving open connections die with their clients)."""
        self._kill()
        self._keys_path.unlink(missing_ok=True)

    async def __aenter__(self) -> OpenSshServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


# --------------------------------------------------------------------------- serve (benchmarks)


async def _serve(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    fleet = SshFleet(directory)
    if args.sftp:
        fleet.shared_sftp_root = directory / "sftp-root"
        fleet.shared_sftp_root.mkdir(exist_ok=True)
    fleet.native_install_check = args.homes
    async with fleet:
        for address in args.addresses:
            root = None
            if args.homes:
                # A home of its own with claw-clan installed: SFTP, the install check and
                # any other command (the leader's fence script) run there, as on a machine.
                root = directory / "homes" / address
                (root / ".openclaw" / "claw-clan").mkdir(parents=True, exist_ok=True)
            await fleet.add_peer(address, root=root)
        (directory / "known_hosts").write_text(fleet.known_hosts_text())
        ports = {p.address: p.port for p in fleet.peers.values()}
        print(" ".join(f"{a}:{p}" for a, p in ports.items()), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run asyncssh peers until SIGTERM")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--dir", required=True, help="writes id_ed25519 and known_hosts here")
    serve.add_argument("--sftp", action="store_true", help="serve SFTP into DIR/sftp-root")
    serve.add_argument(
        "--homes",
        action="store_true",
        help="each peer a home of its own under DIR/homes (SFTP and commands in /bin/sh)",
    )
    serve.add_argument("addresses", nargs="+")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
