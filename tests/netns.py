"""Network namespaces joined by a bridge, for fleet tests over real multicast.

Every namespace gets one veth into a private "switch" namespace holding the bridge;
addresses (10.77.0.0/24) exist only inside namespaces this module creates, and
`close()` deletes them all (which removes their links too).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.77.0"


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
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.switch, "link", "set", "br0", "up")

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
        _ip("link", "add", inside, "netns", namespace, "type", "veth", "peer", outside,
            "netns", self.switch)  # fmt: skip
        _ip("-n", self.switch, "link", "set", outside, "master", "br0", "up")
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
