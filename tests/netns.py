"""Network namespaces joined by a bridge, for fleet tests over real multicast.

Every namespace gets one veth into a private "switch" namespace holding the bridge;
addresses (10.77.0.0/24) exist only inside namespaces this module creates, and
`close()` deletes them all (which removes their links too).

A partition (:meth:`Lab.split`) moves some nodes' switch ports to a second bridge ``br1``
in the switch namespace: the nodes on each bridge reach each other and nothing on the
other one (established TCP connections across the cut stall, as in a real partition);
:meth:`Lab.heal` puts every port back on ``br0``.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.77.0"
IFNAMSIZ = 16  # Linux: interface names are at most 15 characters


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not."""
    probe = f"cwprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError) as exc:
        return f"cannot create network namespaces: {exc}"
    _ip("netns", "del", probe)
    return None


CLONE_NEWNET = 0x40000000


def socket_in(namespace: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """An IPv4 socket of this process, made inside network namespace `namespace`.

    A socket belongs to the namespace it was made in, whichever thread uses it later: a
    short-lived thread joins the namespace (setns only moves the calling thread), makes
    it and ends.
    """
    box: dict[str, socket.socket | BaseException] = {}

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with Path(f"/run/netns/{namespace}").open() as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
            box["socket"] = socket.socket(socket.AF_INET, kind)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=make, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    made = box.get("socket", box.get("error"))
    if isinstance(made, socket.socket):
        return made
    raise made if made is not None else RuntimeError("socket_in: no result")


@dataclass(frozen=True)
class Node:
    namespace: str
    ip: str
    switch_port: str  # the veth end on the bridge: down = this node's cable pulled

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)


class Lab:
    """A switch namespace with a bridge, and nodes plugged into it."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.switch = f"cw{self.tag}sw"
        self.nodes: list[Node] = []
        self._namespaces: list[str] = []
        self._bridges: set[str] = set()
        self._bridge_of: dict[str, str] = {}  # switch port -> the bridge it is plugged into
        self._add_namespace(self.switch)
        self._bridge("br0")

    def _bridge(self, name: str) -> None:
        """Bridge `name` in the switch namespace, up, no IGMP snooping (made once)."""
        if name in self._bridges:
            return
        _ip("-n", self.switch, "link", "add", name, "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.switch, "link", "set", name, "up")
        self._bridges.add(name)

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add(self, role: str) -> Node:
        """A new namespace with address 10.77.0.N/24 on the bridge."""
        n = len(self.nodes) + 2
        namespace = f"cw{self.tag}{role}"
        self._add_namespace(namespace)
        inside, outside = f"cw{self.tag}i{n}", f"cw{self.tag}o{n}"
        for name in (inside, outside):
            if len(name) >= IFNAMSIZ:
                raise ValueError(f"interface name {name!r} is over {IFNAMSIZ - 1} characters")
        _ip("link", "add", inside, "netns", namespace, "type", "veth", "peer", outside,
            "netns", self.switch)  # fmt: skip
        _ip("-n", self.switch, "link", "set", outside, "master", "br0", "up")
        self._bridge_of[outside] = "br0"
        ip = f"{SUBNET}.{n}"
        _ip("-n", namespace, "addr", "add", f"{ip}/24", "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up", "multicast", "on")
        # Multicast (mDNS) leaves through the bridge, not a default route that isn't there.
        _ip("-n", namespace, "route", "add", "224.0.0.0/4", "dev", inside)
        node = Node(namespace, ip, outside)
        self.nodes.append(node)
        return node

    def unplug(self, node: Node) -> None:
        _ip("-n", self.switch, "link", "set", node.switch_port, "down")

    def plug(self, node: Node) -> None:
        _ip("-n", self.switch, "link", "set", node.switch_port, "up")

    def split(self, nodes: Iterable[Node]) -> None:
        """Partition the lab: `nodes` on one side (bridge br1), every other node on the
        other (br0). Replaces any earlier split. A port's cable state (unplug/plug) is kept."""
        away = {node.switch_port for node in nodes}
        unknown = away - set(self._bridge_of)
        if unknown:
            raise ValueError(f"not nodes of this lab: {sorted(unknown)}")
        if away:
            self._bridge("br1")
        self._move({n.switch_port: "br1" if n.switch_port in away else "br0" for n in self.nodes})

    def heal(self) -> None:
        """Every port back on br0: the whole lab one network again."""
        self._move({node.switch_port: "br0" for node in self.nodes})

    def bridge_of(self, node: Node) -> str:
        """The bridge `node`'s switch port is plugged into ("br0" or "br1")."""
        return self._bridge_of[node.switch_port]

    def _move(self, wanted: dict[str, str]) -> None:
        """Ports onto bridges (port -> bridge), all in one `ip -batch`: one moment."""
        moves = {p: b for p, b in wanted.items() if self._bridge_of.get(p) != b}
        if not moves:
            return
        batch = "".join(f"link set {port} master {bridge}\n" for port, bridge in moves.items())
        done = subprocess.run(
            ["ip", "-n", self.switch, "-batch", "-"],
            input=batch,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ip -batch {batch!r}: {done.stderr.strip()}")
        self._bridge_of.update(moves)

    def kill(self, node: Node, comm: str) -> int:
        """SIGKILL every process named `comm` in the node's namespace; how many."""
        done = subprocess.run(
            ["ip", "netns", "pids", node.namespace], capture_output=True, text=True, timeout=10
        )
        killed = 0
        for pid in done.stdout.split():
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                if name == comm:
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
            except (OSError, ValueError):
                continue  # already gone
        return killed

    def close(self) -> None:
        """Delete every namespace made here (idempotent)."""
        while self._namespaces:
            name = self._namespaces.pop()
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
