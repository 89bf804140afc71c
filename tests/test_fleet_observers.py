"""`detection.observers` on a real fleet (tests/fleetharness.py: six machines, each its own
OpenSSH sshd, unix user and `clawd run`, one shared PostgreSQL database, static peers).

With backend postgres and observers = 3, each machine is pinged by 3 of the 5 others
(rendezvous hashing over the verified members the fleet does not call down), not by all 5;
the others learn its verdict from the shared record. Which machine probes which is read
from ping_history (one row per ping: source_gateway -> target_gateway).

* settled, every machine is probed by exactly 3 distinct sources (18 probing pairs, not the
  full mesh's 30) and every machine's status shows its 5 peers online, the ones it does not
  probe included;
* one machine (not the leader) powered off: one `offline` row naming >= 2 of its observers
  (a majority of 3), every survivor shows it offline (those that never probed it too), the
  machines it probed get a new third observer, and nobody else goes offline.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fleetharness import Fleet, FleetTimings, MachineSpec, StatusSample, fleet_of
from pgserver import BasePg
from sshpeers import sshd_path

INTERVAL = 1.0
TIMINGS = FleetTimings(interval=INTERVAL, timeout=0.5, offline_after_missed=3)
SPECS = tuple(MachineSpec(f"m{n}", n) for n in range(1, 7))
IDS = tuple(s.gateway_id for s in SPECS)
OBSERVERS = 3  # detection.observers of every machine
# The harness's detection section, plus the key under test (extra_config replaces whole
# top-level sections, so indirectProbes is said again).
OBSERVED_BY_THREE = {"detection": {"indirectProbes": 0, "observers": OBSERVERS}}

# Which machine probes which: the pings stamped in the last WINDOW seconds. Four intervals,
# so each prober has several pings in it even when its sink delivers a couple of seconds
# late on a busy machine.
WINDOW = 4 * INTERVAL
AGREE_TIMEOUT = 90.0  # a fresh fleet of six on a busy 2-core machine: connect, ping, elect
ASSIGN_TIMEOUT = 60.0  # until the assignment stops moving (members verified one by one)
# "Within three intervals" of the power-off, with the margin a busy 2-core box adds (the
# second observer's report, the sink's delivery); the measured time is printed.
OFFLINE_BOUND = 3 * INTERVAL + 4.0
OFFLINE_WAIT = 30.0  # how long to look for the row at all (a late row is reported as such)
VERDICT_TIMEOUT = 30.0  # every survivor shows the verdict (read from the shared record)

Probes = dict[str, set[str]]  # target -> the sources that pinged it

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a unix user per machine needs root"),
]


@pytest.fixture
async def fleet(tmp_path: Path, pg_server: BasePg) -> AsyncIterator[Fleet]:
    """Six machines, static peers, mDNS off, observers = 3 in every config before start."""
    async with fleet_of(
        tmp_path / "fleet", pg_server, SPECS, timings=TIMINGS, extra_config=OBSERVED_BY_THREE
    ) as made:
        yield made


# --------------------------------------------------------------------------- statuses


def sees_online(among: Collection[str]) -> Callable[[list[StatusSample]], bool]:
    """Every machine of `among` answers and shows every other one of `among` online."""

    def check(samples: list[StatusSample]) -> bool:
        return sorted(s.gateway_id for s in samples) == sorted(among) and all(
            s.peer_status(g) == "online" for s in samples for g in among if g != s.gateway_id
        )

    return check


def sees_down(down: str, among: Collection[str]) -> Callable[[list[StatusSample]], bool]:
    """Every machine of `among` shows `down` offline and the others of `among` online."""
    online = sees_online(among)

    def check(samples: list[StatusSample]) -> bool:
        return online(samples) and all(s.peer_status(down) == "offline" for s in samples)

    return check


def shown(samples: Sequence[StatusSample]) -> dict[str, dict[str, str | None]]:
    """Each machine's view of each peer (for a failing assertion's message)."""
    return {s.gateway_id: {g: s.peer_status(g) for g in IDS if g != s.gateway_id} for s in samples}


# --------------------------------------------------------------------------- ping_history


async def probes(fleet: Fleet, seconds: float, *, not_from: Collection[str] = ()) -> Probes:
    """Who pinged whom in the last `seconds` (the database's clock: the daemons stamp their
    pings on the same host), sources in `not_from` left out."""
    rows = await fleet.db_fetch(
        "SELECT DISTINCT source_gateway, target_gateway FROM ping_history"
        ' WHERE "timestamp" > now() - make_interval(secs => $1)'
        " AND NOT (source_gateway = ANY($2::text[]))",
        seconds,
        list(not_from),
    )
    found: Probes = {}
    for row in rows:
        found.setdefault(row["target_gateway"], set()).add(row["source_gateway"])
    return found


def probed_by_exactly(found: Probes, targets: Collection[str], k: int) -> bool:
    return all(len(found.get(t, set())) == k for t in targets)


def targets_of(found: Probes, source: str) -> set[str]:
    return {t for t, sources in found.items() if source in sources}


async def settled_probes(
    fleet: Fleet, targets: Collection[str], *, not_from: Collection[str] = ()
) -> Probes:
    """Once every one of `targets` is pinged by exactly OBSERVERS sources (bounded wait:
    the assignment moves while members are verified or leave), the probes of the next,
    disjoint window, asserted to hold still: the assignment settled, not passing by."""
    started = time.monotonic()
    found: Probes = {}
    for _ in range(int(ASSIGN_TIMEOUT / INTERVAL) + 1):
        found = await probes(fleet, WINDOW, not_from=not_from)
        if probed_by_exactly(found, targets, OBSERVERS):
            break
        if time.monotonic() - started >= ASSIGN_TIMEOUT:
            raise AssertionError(f"never {OBSERVERS} sources per target: {found}")
        await asyncio.sleep(INTERVAL)
    print(f"\nassignment settled after {time.monotonic() - started:.1f} s: {found}")
    await asyncio.sleep(WINDOW)  # the next window shares no ping with this one
    later = await probes(fleet, WINDOW, not_from=not_from)
    assert probed_by_exactly(later, targets, OBSERVERS), (found, later)
    moved = {t: (found.get(t), later.get(t)) for t in targets if found.get(t) != later.get(t)}
    assert not moved, f"the assignment moved: {moved}"
    return later


# --------------------------------------------------------------------------- incidents


async def offline_rows(fleet: Fleet) -> list[dict[str, Any]]:
    return await fleet.db_incidents("offline")


def witnesses(row: dict[str, Any]) -> set[str]:
    return {w["observer"] for w in row["details"]["witnesses"]}


async def start_settled(fleet: Fleet) -> Probes:
    """Start all six; once every machine shows the other five online, the settled probes."""
    await fleet.start_all(ready_timeout=60)
    await fleet.until(sees_online(IDS), AGREE_TIMEOUT, poll=0.5)
    return await settled_probes(fleet, IDS)


# --------------------------------------------------------------------------- tests


async def test_each_machine_is_probed_by_three_observers_and_every_machine_sees_every_peer(
    fleet: Fleet,
) -> None:
    found = await start_settled(fleet)
    pairs = {(s, t) for t, sources in found.items() for s in sources}
    print(f"probing pairs: {len(pairs)} (full mesh: {len(IDS) * (len(IDS) - 1)})")
    assert all(t not in sources for t, sources in found.items()), found  # nobody pings itself
    assert len(pairs) == OBSERVERS * len(IDS), found

    # Each machine probes only some of its peers, yet shows all five online: the rest come
    # from the fleet's verdicts in the shared database. Asked as a user would, on each one.
    samples = [await fleet.status_cli(g) for g in IDS]
    assert sees_online(IDS)(samples), shown(samples)
    unprobed = {g: set(IDS) - {g} - targets_of(found, g) for g in IDS}
    assert any(unprobed.values()), found  # so the check above covered peers not pinged
    print(f"peers each machine shows but does not probe: {unprobed}")


async def test_a_power_off_is_one_offline_row_seen_by_every_machine_and_its_observers_are_replaced(
    fleet: Fleet,
) -> None:
    before = await start_settled(fleet)
    leader = (await fleet.status(IDS[0])).leader
    # Not the leader (one change at a time), and one that probes the most machines: their
    # new observers are what is looked at.
    candidates = [g for g in IDS if g != leader]
    victim = max(candidates, key=lambda g: (len(targets_of(before, g)), g))
    orphaned = targets_of(before, victim)
    assert orphaned, f"{victim} probes nobody: {before}"
    survivors = [g for g in IDS if g != victim]
    its_observers = before[victim]
    not_observing = set(survivors) - its_observers
    assert not_observing, before  # 5 survivors, 3 observers: 2 read the verdict only
    print(f"leader {leader}; powering off {victim}, observed by {sorted(its_observers)},")
    print(f"probing {sorted(orphaned)}")

    killed_at = time.time()
    await fleet.power_off(victim)

    async def victim_offline() -> bool:
        return any(r["gatewayId"] == victim for r in await offline_rows(fleet))

    await fleet.wait_for(victim_offline, timeout=OFFLINE_WAIT, poll=0.2)
    first = next(r for r in await offline_rows(fleet) if r["gatewayId"] == victim)
    took = datetime.fromisoformat(first["timestamp"]).timestamp() - killed_at
    print(f"power-off -> offline row after {took:.2f} s, witnesses {sorted(witnesses(first))}")
    assert took <= OFFLINE_BOUND, (took, first)

    # Every survivor shows it offline, the two that never pinged it as well (from the
    # shared record), and still shows the other survivors online.
    samples, _ = await fleet.until(
        sees_down(victim, survivors), VERDICT_TIMEOUT, gateway_ids=survivors, poll=0.5
    )
    assert all(s.peer_status(victim) == "offline" for s in samples), shown(samples)
    # From ping_history: the last window before the power-off and everything since.
    lately = await probes(fleet, time.time() - killed_at + WINDOW)
    never_pinged_it = set(survivors) - lately.get(victim, set())
    assert never_pinged_it & not_observing, (lately, before)

    # Its observers' pings go on (nothing changes for targets it did not probe); the ones
    # it probed get a new third observer among the survivors.
    after = await settled_probes(fleet, survivors, not_from=[victim])
    for target in orphaned:
        assert before[target] - {victim} <= after[target], (target, before, after)
    print(f"new observers: { {t: sorted(after[t] - before[t]) for t in sorted(orphaned)} }")

    # One power-off, one row: a majority (2 of 3) of its assigned observers, named; and no
    # survivor went offline for it.
    rows = await offline_rows(fleet)
    assert [r["gatewayId"] for r in rows] == [victim], rows
    named = witnesses(rows[0])
    assert len(named) >= 2 and named <= its_observers, (rows[0], before)
    assert rows[0]["details"]["quorum"] == 2, rows[0]
