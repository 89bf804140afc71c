"""NOT COLLECTED (flaky, see the stop-24 note): run with `pytest tests/fleet_partition_scenario.py`.

Issue 15: a partition of the fleet into two halves is one fleet event.

Five machines, each a network namespace of its own on one bridge (tests/fleetharness.py
with a lab: its own OpenSSH sshd, unix user and `clawd run`; one shared PostgreSQL, reached
through a forwarder on the database's side). The leader m1 and m2 are cut off from m3, m4,
m5 and the database (their ports moved to a bridge of their own: they still reach each
other). Then:

* the shared record holds one `partition` row naming m1 and m2, and no `offline` row;
* the majority takes the lease from the silent leader (its session still holds the lock in
  PostgreSQL): one new leader m3, one new epoch, one `leader_change` row; the minority
  holds no lease: nobody there acts as leader;
* healed: one `partition_end`, no `recovery` rows, m1 leads again (one more
  `leader_change`: a real change), and what the minority spooled while cut off (its own
  observers' reports of m3..m5 down) adds no incident.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fleetharness import Fleet, FleetTimings, MachineSpec, StatusSample, fleet_of
from netns import Lab
from pgserver import BasePg
from sshpeers import sshd_path

TIMINGS = FleetTimings(interval=0.5, timeout=0.4, offline_after_missed=3)
FIVE = tuple(MachineSpec(f"m{n}", n) for n in range(1, 6))
IDS = [s.gateway_id for s in FIVE]
MINORITY = ["m1", "m2"]
MAJORITY = ["m3", "m4", "m5"]
AGREE_TIMEOUT = 90.0  # a fresh fleet of five on a busy 2-core machine
CUT_TIMEOUT = 60.0
# Two of five make a partition (the default needs three).
CONFIG = {
    "storage": {"flushIntervalSeconds": 0.1, "leaderLease": True},
    "detection": {"indirectProbes": 0, "partitionMinPeers": 2},
}

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def agree(
    leader: str, among: Sequence[str], online: Sequence[str], offline: Sequence[str] = ()
) -> Callable[[list[StatusSample]], bool]:
    """Every machine of `among` reports `leader` in one epoch, only `leader` holds the
    lease, each shows the machines of `online` online and those of `offline` not."""

    def check(samples: list[StatusSample]) -> bool:
        if sorted(s.gateway_id for s in samples) != sorted(among):
            return False
        if len({s.epoch for s in samples}) != 1:
            return False
        for s in samples:
            held = (s.answer.get("lease") or {}).get("held")
            if s.leader != leader or held != (s.gateway_id == leader):
                return False
            if any(s.peer_status(g) != "online" for g in online if g != s.gateway_id):
                return False
            if any(s.peer_status(g) == "online" for g in offline):
                return False
        return True

    return check


async def rows_since(fleet: Fleet, since: datetime) -> list[dict[str, Any]]:
    rows = await fleet.db_fetch(
        "SELECT gateway_id, event_type, details, timestamp FROM incident_log"
        " WHERE timestamp >= $1 ORDER BY timestamp, id",
        since,
    )
    return [
        {
            "gatewayId": r["gateway_id"],
            "eventType": r["event_type"],
            "details": json.loads(r["details"]) if r["details"] else {},
        }
        for r in rows
    ]


async def settle(fleet: Fleet, rounds: int = 6) -> None:
    """Until every daemon has sent `rounds` more pings to each peer it probes (bounded):
    a late extra incident would have been recorded by then."""
    before = {s.gateway_id: s.answer["pinger"]["pings_sent"] for s in await fleet.statuses()}

    def done(samples: list[StatusSample]) -> bool:
        # k=3 observers: each daemon probes three peers.
        return all(
            s.answer["pinger"]["pings_sent"] >= before[s.gateway_id] + rounds * 3 for s in samples
        )

    await fleet.until(done, timeout=rounds * TIMINGS.interval * 8 + 10)


def counted(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["eventType"] for r in rows)


async def test_a_fleet_cut_in_two_halves_is_one_partition_and_the_minority_cannot_lead(
    lab: Lab, tmp_path: Path, pg_server: BasePg
) -> None:
    async with fleet_of(
        tmp_path / "fleet",
        pg_server,
        FIVE,
        timings=TIMINGS,
        extra_config=CONFIG,
        lab=lab,
        user_prefix="clawcut",  # not the other fleet tests' logins: tear-down kills theirs
    ) as fleet:
        await fleet.start_all()
        samples, took = await fleet.until(agree("m1", IDS, IDS), AGREE_TIMEOUT)
        first_epoch = samples[0].epoch
        print(f"\nall online, m1 leads epoch {first_epoch}: {took:.1f} s")

        cut = datetime.now(UTC)
        started = time.monotonic()
        fleet.split(MINORITY)

        async def partition_recorded() -> bool:
            return counted(await rows_since(fleet, cut))["partition"] >= 1

        took = await fleet.wait_for(partition_recorded, CUT_TIMEOUT)
        print(f"cut: `partition` row after {took:.1f} s")
        majority, took = await fleet.until(
            agree("m3", MAJORITY, MAJORITY, MINORITY), CUT_TIMEOUT, gateway_ids=MAJORITY
        )
        print(f"majority agrees on m3 (epoch {majority[0].epoch}) {took:.1f} s later")
        assert majority[0].epoch > first_epoch
        # The minority: the lease session is gone with the database; nobody holds it.
        await fleet.until(
            lambda ss: not any((s.answer.get("lease") or {}).get("held") for s in ss),
            CUT_TIMEOUT,
            gateway_ids=MINORITY,
        )
        for _ in range(6):  # and stays so while cut off
            for s in await fleet.statuses(MINORITY):
                assert not (s.answer.get("lease") or {}).get("held"), s.answer.get("lease")
        during = await rows_since(fleet, cut)
        events = counted(during)
        assert events["partition"] == 1, during
        assert events["offline"] == 0, during
        assert events["leader_change"] == 1, during
        (opened,) = [r for r in during if r["eventType"] == "partition"]
        assert opened["details"]["members"] == MINORITY, opened
        assert len(opened["details"]["witnesses"]) >= 2, opened
        assert {w["observer"] for w in opened["details"]["witnesses"]} <= set(MAJORITY)
        (change,) = [r for r in during if r["eventType"] == "leader_change"]
        assert change["details"]["new"] == "m3", change
        print(f"while cut off ({time.monotonic() - started:.1f} s): {dict(events)}")

        healed = datetime.now(UTC)
        fleet.heal()
        samples, took = await fleet.until(agree("m1", IDS, IDS), AGREE_TIMEOUT)
        print(f"healed: all online, m1 leads epoch {samples[0].epoch} after {took:.1f} s")
        assert samples[0].epoch > majority[0].epoch

        async def minority_delivered() -> bool:
            """Both minority machines' reports from after the heal are in: their spools,
            replayed in order, held everything from the cut before them."""
            rows = await fleet.db_fetch(
                "SELECT DISTINCT observer FROM observer_evidence"
                " WHERE observer = ANY($1::text[]) AND event_type <> 'offline'"
                " AND timestamp > $2",
                MINORITY,
                healed,
            )
            return len(rows) == len(MINORITY)

        await fleet.wait_for(minority_delivered, CUT_TIMEOUT)

        async def ended() -> bool:
            return counted(await rows_since(fleet, cut))["partition_end"] >= 1

        await fleet.wait_for(ended, CUT_TIMEOUT)
        spooled = await fleet.db_fetch(
            "SELECT count(*) AS n FROM observer_evidence"
            " WHERE observer = ANY($1::text[]) AND event_type = 'offline' AND timestamp > $2",
            MINORITY,
            cut,
        )
        print(f"the minority's spooled `offline` reports: {spooled[0]['n']}")
        await settle(fleet)
        after = await rows_since(fleet, cut)
        events = counted(after)
        print(f"after the heal: {dict(events)}")
        assert events["partition"] == 1, after
        assert events["partition_end"] == 1, after
        assert events["offline"] == 0 and events["recovery"] == 0, after
        assert events["leader_change"] == 2, after
        (end,) = [r for r in after if r["eventType"] == "partition_end"]
        assert end["details"]["back"] == 2, end
