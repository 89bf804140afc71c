"""Issue 12 items 9 and 11 on a real fleet: three machines, each its own OpenSSH sshd on its
own loopback address and unix user, its own `clawd run` and home, one shared PostgreSQL
database (see tests/fleetharness.py).

* item 11: a start records at most one leader_change per observer, a restart that finds the
  leader the store already had none;
* item 9: a live edit of the leader's instance.leadNumber re-runs the election on every
  machine within seconds, and no daemon's epoch goes backwards;
* a power-off of the leader (clawd and every sshd process killed): the others take it
  offline and elect the next one; powered on, it leads again in a newer epoch.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fleetharness import Fleet, FleetTimings, MachineSpec, StatusSample, fleet_of
from pgserver import BasePg
from sshpeers import sshd_path

TIMINGS = FleetTimings(interval=0.5, timeout=0.4, offline_after_missed=3)
SPECS = (MachineSpec("m1", 1), MachineSpec("m2", 2), MachineSpec("m3", 3))
IDS = tuple(s.gateway_id for s in SPECS)
AGREE_TIMEOUT = 30.0  # a fresh fleet: connect, ping, elect (seconds, on a busy machine)
# Issue 12 item 9 says "within a second of the reload": the reload itself waits for the
# file watcher, and the others learn of it on their next pings; 15 s is the margin of a
# busy 2-core machine, the measured time is printed.
REELECT_TIMEOUT = 15.0
SETTLE_ROUNDS = 6  # ping rounds given to a late extra leader_change to show up

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a unix user per machine needs root"),
]


# These tests are about the fenced epochs (backend json, or the lease turned off); the
# leader lease, on by default with backend postgres, has its own in test_fleet_lease.py.
FENCED_EPOCHS = {"storage": {"flushIntervalSeconds": 0.1, "leaderLease": False}}


@pytest.fixture
async def fleet(tmp_path: Path, pg_server: BasePg) -> AsyncIterator[Fleet]:
    """Static peers, mDNS off."""
    async with fleet_of(
        tmp_path / "fleet", pg_server, SPECS, timings=TIMINGS, extra_config=FENCED_EPOCHS
    ) as made:
        yield made


@pytest.fixture
async def announcing_fleet(
    tmp_path: Path, pg_server: BasePg, request: pytest.FixtureRequest
) -> AsyncIterator[Fleet]:
    """Peers announced over mDNS (their lead numbers with them); static peers as well
    when the test's parameter says "both"."""
    peers_from = request.param
    async with fleet_of(
        tmp_path / "fleet",
        pg_server,
        SPECS,
        timings=TIMINGS,
        peers_from=peers_from,
        extra_config=FENCED_EPOCHS,
    ) as made:
        yield made


def agreed_on(
    leader: str, among: Sequence[str] = IDS, *, seen_since: datetime | None = None
) -> Callable[[list[StatusSample]], bool]:
    """Every machine in `among` answers, sees the others of `among` online (pinged after
    `seen_since`, when given: a restarted daemon first shows its stored view), and `leader`."""

    def fresh(sample: StatusSample, gid: str) -> bool:
        row = next(r for r in sample.answer["peers"] if r["gatewayId"] == gid)
        if row["status"] != "online":
            return False
        return seen_since is None or datetime.fromisoformat(row["lastSeen"]) > seen_since

    def check(samples: list[StatusSample]) -> bool:
        if sorted(s.gateway_id for s in samples) != sorted(among):
            return False
        return all(
            s.leader == leader
            and all(
                s.peer_status(g) is not None and fresh(s, g) for g in among if g != s.gateway_id
            )
            for s in samples
        )

    return check


def epochs_by_daemon(samples: Sequence[StatusSample]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        seen.setdefault(sample.gateway_id, []).append(sample.epoch)
    return seen


def assert_epochs_never_go_back(samples: Sequence[StatusSample]) -> None:
    for gid, epochs in epochs_by_daemon(samples).items():
        assert epochs == sorted(epochs), f"{gid}: epoch went backwards: {epochs}"


async def settle(fleet: Fleet, rounds: int = SETTLE_ROUNDS) -> None:
    """Until every running daemon has sent `rounds` more pings to each of its peers
    (bounded), so that a late leader_change would have been recorded by then."""
    before = {s.gateway_id: s.answer["pinger"]["pings_sent"] for s in await fleet.statuses()}
    peers = len(SPECS) - 1

    def done(samples: list[StatusSample]) -> bool:
        return all(
            s.answer["pinger"]["pings_sent"] >= before[s.gateway_id] + rounds * peers
            for s in samples
        )

    await fleet.until(done, timeout=rounds * TIMINGS.interval * 6 + 10)


async def cli_leaders(fleet: Fleet, among: Sequence[str] = IDS) -> dict[str, str | None]:
    """What `clawd status --json` says the leader is, on each machine."""
    return {g: (await fleet.status_cli(g)).leader for g in among}


def leader_changes(fleet: Fleet) -> dict[str, list[dict[str, Any]]]:
    """The leader_change incidents each machine's daemon recorded itself (observer)."""
    return {g: fleet.incidents(g, "leader_change") for g in IDS}


def no_tracebacks(fleet: Fleet) -> None:
    for machine in fleet.machines.values():
        assert "Traceback" not in machine.logs(), machine.logs()


# -- item 11 ---------------------------------------------------------------------------


async def test_a_fleet_start_records_one_leader_change_per_observer_and_a_restart_none(
    fleet: Fleet,
) -> None:
    """Issue 12 item 11 on a real fleet: three daemons started at once on a fresh shared
    database agree on m1 (lowest leadNumber); each records at most one leader_change; all
    stopped and started again (the store already has m1), nobody records a new one."""
    await fleet.start_all()
    samples: list[StatusSample] = []
    _, took = await fleet.until(agreed_on("m1"), AGREE_TIMEOUT, samples=samples)
    print(f"\nfresh fleet agreed on m1 after {took:.2f} s")
    await settle(fleet)
    assert await cli_leaders(fleet) == {g: "m1" for g in IDS}

    first = leader_changes(fleet)
    for gid, changes in first.items():
        assert len(changes) <= 1, (gid, changes)
        assert [c["details"]["new"] for c in changes] == ["m1"], (gid, changes)
    samples.extend(await fleet.statuses())
    assert_epochs_never_go_back(samples)
    assert {s.gateway_id: s.epoch for s in await fleet.statuses()} == {g: 1 for g in IDS}
    # The shared database: one copy per observer today (one record per fleet is issue 15).
    recorded = sum(len(changes) for changes in first.values())

    async def all_delivered() -> bool:
        return len(await fleet.db_incidents("leader_change")) == recorded

    await fleet.wait_for(all_delivered, timeout=20)
    in_db = await fleet.db_incidents("leader_change")

    assert await fleet.stop_all() == {g: 0 for g in IDS}
    for gid in IDS:
        assert fleet.read_store_leader(gid) == "m1"

    restarted = datetime.now(UTC)
    await fleet.start_all()
    samples = []
    agreed = agreed_on("m1", seen_since=restarted)
    _, took = await fleet.until(agreed, AGREE_TIMEOUT, samples=samples)
    print(f"restarted fleet agreed on m1 after {took:.2f} s")
    await settle(fleet)
    assert await cli_leaders(fleet) == {g: "m1" for g in IDS}
    samples.extend(await fleet.statuses())
    assert_epochs_never_go_back(samples)
    again = leader_changes(fleet)
    print(f"leader_change per observer: { {g: len(c) for g, c in again.items()} }")
    for gid in IDS:  # the leader the store had, on every machine: nothing recorded
        assert again[gid] == first[gid], (gid, again[gid])
    assert await fleet.db_incidents("leader_change") == in_db
    assert await fleet.stop_all() == {g: 0 for g in IDS}
    no_tracebacks(fleet)


# -- item 9 ----------------------------------------------------------------------------


def set_lead_number(value: int) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["instance"]["leadNumber"] = value

    return edit


@pytest.mark.parametrize("announcing_fleet", ["mdns", "both"], indirect=True)
async def test_a_live_lead_number_edit_re_elects_on_every_machine_epochs_never_go_back(
    announcing_fleet: Fleet,
) -> None:
    """Issue 12 item 9 on a real fleet: the leader's instance.leadNumber edited 1 -> 9 in
    its config.json while it runs: every daemon sees m2 lead within a bounded wait; edited
    back at once (9 -> 1): m1 leads again everywhere; no daemon's epoch goes backwards.

    The others learn a machine's lead number from its mDNS announcement (with static peers
    only, each machine's config.json holds its peers' numbers: the edit cannot reach them
    until issue 14 reads each peer's own lead number over SSH). The edit back to the number
    announced seconds before used to be lost: zeroconf reports no update for a TXT record
    still in its cache; the TXT `rev` makes it a new record."""
    fleet = announcing_fleet
    await fleet.start_all()
    samples: list[StatusSample] = []
    await fleet.until(agreed_on("m1"), AGREE_TIMEOUT, samples=samples)

    fleet.edit_config("m1", set_lead_number(9))
    _, took = await fleet.until(agreed_on("m2"), REELECT_TIMEOUT, samples=samples, poll=0.05)
    print(f"\nleadNumber 1 -> 9: every machine sees m2 lead after {took:.2f} s")
    assert await cli_leaders(fleet) == {g: "m2" for g in IDS}

    fleet.edit_config("m1", set_lead_number(1))
    _, took = await fleet.until(agreed_on("m1"), REELECT_TIMEOUT, samples=samples, poll=0.05)
    print(f"leadNumber 9 -> 1: every machine sees m1 lead after {took:.2f} s")
    await settle(fleet, rounds=4)
    samples.extend(await fleet.statuses())
    assert await cli_leaders(fleet) == {g: "m1" for g in IDS}

    assert_epochs_never_go_back(samples)
    seen = epochs_by_daemon(samples)
    print(f"epochs seen: { {g: sorted(set(e)) for g, e in seen.items()} }")
    for gid in IDS:  # two elections went by on every machine: the epoch moved on
        assert seen[gid][-1] >= seen[gid][0] + 2, (gid, seen[gid])
    for gid in IDS:  # each observer: m1, m2, m1 again, one incident each
        news = [c["details"]["new"] for c in fleet.incidents(gid, "leader_change")]
        assert news[-2:] == ["m2", "m1"], (gid, news)
    assert await fleet.stop_all() == {g: 0 for g in IDS}
    no_tracebacks(fleet)


# -- power-off ---------------------------------------------------------------------------


async def test_a_powered_off_leader_is_replaced_and_leads_again_when_back(fleet: Fleet) -> None:
    """Issue 12 items 9/11 under a real fault: the leader machine powered off (clawd and
    every sshd process SIGKILLed, nothing of it left in /proc): the others mark it offline
    and m2 leads within a bounded wait; powered on, m1 leads again; no running daemon's
    epoch goes backwards and the returning leader's epoch is above every earlier one."""
    await fleet.start_all()
    samples: list[StatusSample] = []
    await fleet.until(agreed_on("m1"), AGREE_TIMEOUT, samples=samples)
    assert fleet.sshd_pids("m1"), "m1's sshd serves the other machines' sessions"

    killed = await fleet.power_off("m1")
    assert len(killed) >= 3, killed  # the listener and the sessions of m2 and m3 at least
    assert fleet.sshd_pids("m1") == set()
    # Offline after offlineAfterMissed missed pings (1.5 s) plus detection and a busy box.
    _, took = await fleet.until(
        lambda ss: all(s.leader == "m2" and s.peer_status("m1") == "offline" for s in ss),
        REELECT_TIMEOUT,
        gateway_ids=("m2", "m3"),
        samples=samples,
    )
    print(f"\nm1 powered off: m2 and m3 see it offline and m2 lead after {took:.2f} s")
    for gid in ("m2", "m3"):
        offline = [i for i in fleet.incidents(gid, "offline") if i["gatewayId"] == "m1"]
        assert len(offline) == 1, (gid, offline)
    before_return = max(s.epoch for s in samples)

    await fleet.power_on("m1")
    back: list[StatusSample] = []
    _, took = await fleet.until(agreed_on("m1"), AGREE_TIMEOUT, samples=back)
    print(f"m1 powered on: every machine sees it lead after {took:.2f} s")
    await settle(fleet, rounds=4)
    back.extend(await fleet.statuses())
    assert await cli_leaders(fleet) == {g: "m1" for g in IDS}

    # The daemons that ran throughout never went back; the new m1 process may start low
    # (the epoch lives in memory) but leads in an epoch above any the fleet had.
    assert_epochs_never_go_back([s for s in samples + back if s.gateway_id != "m1"])
    assert_epochs_never_go_back([s for s in back if s.gateway_id == "m1"])
    final = {s.gateway_id: s.epoch for s in await fleet.statuses()}
    assert all(epoch > before_return for epoch in final.values()), (before_return, final)
    assert await fleet.stop_all() == {g: 0 for g in IDS}
    no_tracebacks(fleet)
