"""A fleet partitioned in two and healed (tests/fleetharness.py with a tests/netns.py lab).

Four machines (each a network namespace of its own with its OpenSSH sshd, unix user and
`clawd run`, static peers, one shared PostgreSQL reached through a forwarder on the lab's
`db` node), all plugged into one bridge. `fleet.split(["m3", "m4"])` moves m3's and m4's
switch ports to a second bridge: m1, m2 (and the database) on one side, m3, m4 on the
other. Each side still sees itself online and the other side not online, and the
majority's `offline` verdicts on m3 and m4 reach the database; healed, every machine sees
every peer online again. Then one machine is powered off (nothing is left running in its
namespace) and on again.

And the lab's split itself, on plain TCP: no new connection and no byte of an established
one crosses the cut, either way; both sides still reach themselves; healed, the stalled
bytes arrive and new connections work.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from pathlib import Path

import pytest
from fleetharness import (
    Fleet,
    FleetTimings,
    MachineSpec,
    NamespacedPgUnavailableError,
    StatusSample,
    fleet_of,
    pg_unix_socket,
)
from netns import Lab, Node, socket_in
from pgserver import BasePg
from sshpeers import sshd_path

TIMINGS = FleetTimings()  # pings every 0.5 s, offline after 3 misses
SPECS = tuple(MachineSpec(f"m{n}", n) for n in range(1, 5))
IDS = tuple(s.gateway_id for s in SPECS)
MINORITY = ("m3", "m4")  # cut off from m1, m2 and the database
MAJORITY = tuple(g for g in IDS if g not in MINORITY)
USERS = "clawsplit"  # unix users clawsplit1..4: not the other fleet tests' clawfleetN
AGREE_TIMEOUT = 60.0  # generous: a fresh fleet on a busy 2-core machine
SPLIT_TIMEOUT = 60.0

TCP_PORT = 7400
LINK_UP_WAIT = 15.0
CONNECT_TIMEOUT = 1.0  # a connect across the cut: ARP finds nobody, it times out

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and unix users need root"),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
]


# --------------------------------------------------------------------------- the lab alone


@contextlib.contextmanager
def _listener(node: Node, port: int = TCP_PORT) -> Iterator[socket.socket]:
    server = socket_in(node.namespace)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((node.ip, port))
        server.listen()
        server.settimeout(5)
        yield server
    finally:
        server.close()


def _connects(source: Node, target: Node) -> bool:
    """A new TCP connection from `source` to `target` (a listener there) is accepted."""
    with _listener(target) as server:
        client = socket_in(source.namespace)
        client.settimeout(CONNECT_TIMEOUT)
        try:
            client.connect((target.ip, TCP_PORT))
            accepted, _ = server.accept()
            accepted.close()
            return True
        except OSError:
            return False
        finally:
            client.close()


def _connects_soon(source: Node, target: Node, timeout: float = LINK_UP_WAIT) -> bool:
    """`_connects`, tried again for a while: a new veth and bridge port take a moment to
    carry traffic (CI: the first connect of a fresh lab timed out)."""
    deadline = time.monotonic() + timeout
    while True:
        if _connects(source, target):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _received(sock: socket.socket, wanted: bytes, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(len(wanted)) == wanted
    except TimeoutError:
        return False


def test_split_cuts_tcp_both_ways_and_heal_restores_it(lab: Lab) -> None:
    a, b, c, d = (lab.add(role) for role in "abcd")
    assert all(_connects_soon(x, y) for x, y in ((a, c), (c, a), (a, b), (c, d)))
    with _listener(c, TCP_PORT + 1) as server:
        across = socket_in(a.namespace)
        across.settimeout(5)
        across.connect((c.ip, TCP_PORT + 1))
        there, _ = server.accept()
        try:
            lab.split([c, d])
            assert (lab.bridge_of(a), lab.bridge_of(c)) == ("br0", "br1")
            assert not _connects(a, c) and not _connects(c, a) and not _connects(d, b)
            assert _connects_soon(a, b) and _connects_soon(c, d)  # each side one network
            # An established connection stalls both ways (nothing reset, nothing through).
            across.sendall(b"ac")
            there.sendall(b"ca")
            assert not _received(there, b"ac", 1.0) and not _received(across, b"ca", 0.5)
            # unplug/plug still act on a split port.
            lab.unplug(c)
            assert not _connects(d, c)
            lab.plug(c)
            assert _connects_soon(d, c)

            healed_at = time.monotonic()
            lab.heal()
            assert {lab.bridge_of(n) for n in (a, b, c, d)} == {"br0"}
            # TCP retransmits the stalled bytes; its backoff decides when (it doubles while
            # the cut lasts: on a busy machine the checks above take a while).
            assert _received(there, b"ac", 60.0) and _received(across, b"ca", 60.0)
            print(f"\nstalled bytes through {time.monotonic() - healed_at:.2f} s after heal")
        finally:
            there.close()
            across.close()
    assert all(_connects_soon(x, y) for x, y in ((a, c), (c, a), (d, b)))


# --------------------------------------------------------------------------- the fleet


@pytest.fixture
async def fleet(tmp_path: Path, pg_server: BasePg, lab: Lab) -> AsyncIterator[Fleet]:
    try:
        pg_unix_socket(pg_server)
    except NamespacedPgUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    async with fleet_of(
        tmp_path / "fleet", pg_server, SPECS, timings=TIMINGS, lab=lab, user_prefix=USERS
    ) as made:
        yield made


def sees(
    online: Collection[str], not_online: Collection[str] = ()
) -> Callable[[list[StatusSample]], bool]:
    """Every sampled machine shows the others of `online` online and `not_online` not."""

    def check(samples: list[StatusSample]) -> bool:
        return all(
            s.peer_status(g) == "online" for s in samples for g in online if g != s.gateway_id
        ) and all(s.peer_status(g) not in {"online", None} for s in samples for g in not_online)

    return check


def _shown(samples: list[StatusSample]) -> str:
    return "; ".join(
        f"{s.gateway_id}: leader={s.leader} "
        + " ".join(f"{g}={s.peer_status(g)}" for g in IDS if g != s.gateway_id)
        for s in samples
    )


def _seen(timeline: list[StatusSample]) -> str:
    """Per machine, the leaders and each peer's statuses it showed, in order of change."""

    def changes(values: list[str | None]) -> str:
        kept = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
        return ">".join(str(v) for v in kept)

    parts = []
    for g in IDS:
        mine = [s for s in timeline if s.gateway_id == g]
        if mine:
            peers = " ".join(
                f"{p}={changes([s.peer_status(p) for s in mine])}" for p in IDS if p != g
            )
            parts.append(f"{g}: leader={changes([s.leader for s in mine])} {peers}")
    return "; ".join(parts)


def _namespace_pids(namespace: str) -> list[str]:
    done = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.split()


async def test_a_split_fleet_sees_each_half_and_heals(fleet: Fleet) -> None:
    started = time.monotonic()
    assert {m.address for m in fleet.machines.values()} == {fleet.node(g).ip for g in IDS}
    await fleet.start_all()
    samples, took = await fleet.until(sees(IDS), AGREE_TIMEOUT)
    print(f"\nall online after {took:.1f} s: {_shown(samples)}")

    fleet.split(MINORITY)
    timeline: list[StatusSample] = []
    _, took = await fleet.until(
        sees(MAJORITY, MINORITY), SPLIT_TIMEOUT, gateway_ids=MAJORITY, samples=timeline
    )
    print(f"split: the majority sees the minority not online after {took:.1f} s")
    _, took = await fleet.until(
        sees(MINORITY, MAJORITY), SPLIT_TIMEOUT, gateway_ids=MINORITY, samples=timeline
    )
    print(f"split: the minority sees the majority not online after {took:.1f} s")

    # The majority has the database: its verdict on the minority is recorded there (the
    # test reads it from the root namespace). The minority cannot write anything there.
    async def minority_offline() -> bool:
        timeline.extend(await fleet.statuses())
        rows = await fleet.db_incidents("offline")
        return {r["gatewayId"] for r in rows} >= set(MINORITY)

    took = await fleet.wait_for(minority_offline, SPLIT_TIMEOUT, poll=0.25)
    offline = await fleet.db_incidents("offline")
    named = {r["gatewayId"]: [w["observer"] for w in r["details"]["witnesses"]] for r in offline}
    print(f"split: offline rows after {took:.1f} s more, witnesses {named}")
    assert sorted(r["gatewayId"] for r in offline) == sorted(MINORITY), offline
    for row in offline:
        assert {w["observer"] for w in row["details"]["witnesses"]} <= set(MAJORITY), row
    # Each side still agrees with itself, in one round of every machine.
    both = await fleet.statuses()
    timeline.extend(both)
    assert sees(MAJORITY, MINORITY)([s for s in both if s.gateway_id in MAJORITY]), _shown(both)
    assert sees(MINORITY, MAJORITY)([s for s in both if s.gateway_id in MINORITY]), _shown(both)
    print(f"during the split: {_seen(timeline)}")
    print(f"postgres as each says: { {s.gateway_id: s.answer.get('postgres') for s in both} }")

    fleet.heal()
    healed, took = await fleet.until(sees(IDS), AGREE_TIMEOUT)
    print(f"healed: all online after {took:.1f} s: {_shown(healed)}")

    # A power-off in a lab leaves nothing running in the machine's namespace.
    victim = MINORITY[-1]
    await fleet.power_off(victim)
    assert _namespace_pids(fleet.node(victim).namespace) == []
    others = [g for g in IDS if g != victim]
    await fleet.until(sees(others, [victim]), SPLIT_TIMEOUT, gateway_ids=others)
    await fleet.power_on(victim)
    _, took = await fleet.until(sees(IDS), AGREE_TIMEOUT)
    print(f"{victim} powered off and on: all online again after {took:.1f} s")
    print(f"test body {time.monotonic() - started:.1f} s")
