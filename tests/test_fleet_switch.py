"""Issue 15: a whole fleet moving from JSON to the shared database keeps one record.

Five real machines (tests/fleetharness.py: OpenSSH sshd, unix user and `clawd run` each)
start on backend json, every machine watching every other. m5 is powered off and on:
each of the four others records its own `offline` and `recovery` of m5 in its own JSON
files. Then the seed's switch: the leader's config.json is edited to backend postgres,
and the leader pushes it to every peer (it lands in each login's ~/.openclaw/claw-clan,
which the harness hands to that machine's daemon). Every machine then sends what it
recorded on JSON, as its reports: the shared record holds one row per real event (one
`offline`, one `recovery` of m5, one row per leader change), every report as evidence,
and `clawd report` on any machine counts the real events.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from daemonproc import run_cli
from fleetharness import Fleet, FleetTimings, MachineSpec, StatusSample, fleet_of
from pgserver import BasePg
from sshpeers import sshd_path

TIMINGS = FleetTimings(interval=0.5, timeout=0.4, offline_after_missed=3)
FIVE = tuple(MachineSpec(f"m{n}", n) for n in range(1, 6))
IDS = [s.gateway_id for s in FIVE]
SURVIVORS = IDS[:4]
AGREE_TIMEOUT = 90.0
CONFIG = {
    "backend": "json",
    "storage": {"flushIntervalSeconds": 0.1, "leaderLease": True},
    "detection": {"indirectProbes": 0},
}

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(sshd_path() is None, reason="OpenSSH server not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a unix user per machine needs root"),
]


def shows(
    status: str, targets: Sequence[str], leader: str | None = None
) -> Callable[[list[StatusSample]], bool]:
    def check(samples: list[StatusSample]) -> bool:
        return all(
            all(s.peer_status(g) == status for g in targets if g != s.gateway_id)
            and (leader is None or s.leader == leader)
            for s in samples
        )

    return check


def on_postgres(samples: list[StatusSample]) -> bool:
    """Every machine runs the shared database's lease, and m1 holds it."""
    return len(samples) == len(IDS) and all(
        (s.answer.get("lease") or {}).get("held") == (s.gateway_id == "m1")
        and (s.answer.get("lease") or {}).get("leader") == "m1"
        for s in samples
    )


async def evidence_from_every_machine(fleet: Fleet) -> bool:
    rows = await fleet.db_fetch("SELECT DISTINCT observer FROM observer_evidence")
    return {r["observer"] for r in rows} == set(IDS)


def by_gateway_and_type(rows: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((r["gatewayId"], r["eventType"]) for r in rows)


async def test_a_json_fleet_switched_by_the_leaders_push_keeps_one_record(
    tmp_path: Path, pg_server: BasePg
) -> None:
    async with fleet_of(
        tmp_path / "fleet",
        pg_server,
        FIVE,
        timings=TIMINGS,
        extra_config=CONFIG,
        user_prefix="clawswitch",  # not the other fleet tests' logins: tear-down kills theirs
        follow_pushes=True,
    ) as fleet:
        await fleet.start_all()
        await fleet.until(shows("online", IDS, leader="m1"), AGREE_TIMEOUT)
        await fleet.power_off("m5")
        await fleet.until(shows("offline", ["m5"]), AGREE_TIMEOUT, gateway_ids=SURVIVORS)
        await fleet.power_on("m5")
        await fleet.until(shows("online", IDS, leader="m1"), AGREE_TIMEOUT)
        on_json = {g: Counter(i["eventType"] for i in fleet.incidents(g)) for g in IDS}
        print(f"\non JSON, each machine's own incidents: {on_json}")
        assert all(on_json[g]["offline"] == 1 and on_json[g]["recovery"] == 1 for g in SURVIVORS)
        (schema,) = await fleet.db_fetch("SELECT to_regclass('incident_log') AS t")
        assert schema["t"] is None  # nothing shared yet: no machine has used the database

        # The seed's switch: edit the leader's config.json; it pushes it to the others.
        fleet.edit_config("m1", lambda c: c.update(backend="postgres"))
        _, took = await fleet.until(on_postgres, AGREE_TIMEOUT)
        print(f"every machine on postgres, m1 holding the lease, {took:.1f} s after the edit")
        for gid in IDS[1:]:
            assert fleet.read_config(gid)["backend"] == "postgres"  # pushed by m1
            assert fleet.read_config(gid)["instance"]["gatewayId"] == gid  # its own kept
        await fleet.wait_for(lambda: evidence_from_every_machine(fleet), AGREE_TIMEOUT)
        await fleet.until(shows("online", IDS, leader="m1"), AGREE_TIMEOUT)

        rows = await fleet.db_incidents()
        counts = by_gateway_and_type(rows)
        print(f"the shared record: {dict(counts)}")
        assert counts[("m5", "offline")] == 1, rows
        assert counts[("m5", "recovery")] == 1, rows
        assert all(counts[(g, "online")] <= 1 for g in IDS), rows
        # One leader change, m1 at the start, that every machine recorded on JSON; taking
        # the lease in a new epoch is no change of leader.
        changes = [r["details"] for r in rows if r["eventType"] == "leader_change"]
        assert [c["new"] for c in changes] == ["m1"], changes
        assert {w["observer"] for w in changes[0]["witnesses"]} == set(IDS), changes
        (offline,) = [r for r in rows if (r["gatewayId"], r["eventType"]) == ("m5", "offline")]
        assert {w["observer"] for w in offline["details"]["witnesses"]} <= set(SURVIVORS)
        evidence = await fleet.db_fetch(
            "SELECT count(*) AS n FROM observer_evidence WHERE target = 'm5'"
            " AND event_type IN ('offline', 'recovery')"
        )
        assert evidence[0]["n"] == 2 * len(SURVIVORS)  # every machine's reports, kept

        report = run_cli(fleet.machines["m3"].home, "report", "--since", "1h", "--json")
        assert report.returncode == 0, report.stderr
        peers = {p["gatewayId"]: p for p in json.loads(report.stdout)["peers"]}
        print(f"clawd report on m3, m5's incidents: {peers['m5']['incidents']}")
        assert peers["m5"]["incidents"].get("offline") == 1
        assert peers["m5"]["incidents"].get("recovery") == 1
