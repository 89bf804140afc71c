"""`clawd status --why PEER`: the evidence about one peer and the rule that decided."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clawd.core.text import printable
from clawd.decide.rules import RULES, RULES_BY_NAME
from clawd.decide.view import FleetView, PeerRecord, Thresholds, evidence


def find_peer(view: FleetView, wanted: str) -> PeerRecord | None:
    """By gateway id, else by name (when exactly one peer has it)."""
    record = view.peers.get(wanted)
    if record is not None:
        return record
    named = [r for r in view.peers.values() if r.instance.name == wanted]
    return named[0] if len(named) == 1 else None


def _not_a_rule(view: FleetView, record: PeerRecord) -> str:
    if not view.probes(record.instance.gateway_id):
        # decide/observing.py: its observers are other machines.
        return "not probed from here: the fleet's verdict from the shared record"
    return ""


def explain(view: FleetView, record: PeerRecord, t: Thresholds, now: datetime) -> dict[str, Any]:
    """Everything `--why` prints, as JSON-ready values."""
    e = evidence(view, record, t, now)
    answered = record.mdns_answered_at
    rule = RULES_BY_NAME.get(record.rule)
    state = record.state
    return {
        "gatewayId": record.instance.gateway_id,
        "name": record.instance.name,
        "ip": record.instance.ip,
        "status": state.status.value,
        "rule": record.rule,
        "because": rule.explains if rule else _not_a_rule(view, record),
        "detector": t.detector.kind,
        "phi": round(min(record.phi, 999.0), 2),
        "phiSuspect": t.detector.phi_suspect,
        "phiOffline": t.detector.phi_offline,
        "heartbeats": record.arrivals.learned,
        "evidence": e.as_dict(),
        "mdnsAnsweredSecondsAgo": (
            None if answered is None else round((now - answered).total_seconds(), 1)
        ),
        "lastSeen": state.last_seen.isoformat() if state.last_seen else None,
        "installed": state.claw_clan_installed,
        "flapPercent": round(record.flap_percent, 1),
        "flapping": record.flapping,
        "reachableBy": list(record.reachable_by),
        "rules": [r.name for r in RULES],
    }


def render(detail: dict[str, Any]) -> str:
    ev = detail.get("evidence", {})
    name = printable(str(detail.get("name")))
    lines = [
        f"{name} ({printable(str(detail.get('gatewayId')))}, {detail.get('ip') or '-'}): "
        f"{detail.get('status')}",
        f"  rule      {detail.get('rule')}: {detail.get('because')}",
        f"  detector  {detail.get('detector')}: phi {detail.get('phi')} "
        f"(suspect >= {detail.get('phiSuspect')}, offline >= {detail.get('phiOffline')}; "
        f"{detail.get('heartbeats')} heartbeat gaps learned) -> {ev.get('suspicion')}",
        f"  ssh       last ping {_ok(ev.get('last_ping_ok'))}, "
        f"{ev.get('missed')} missed in a row, {ev.get('ok_streak')} ok in a row",
        f"  tcp       port {'accepts connections' if ev.get('tcp_reachable') else 'no answer'}",
        f"  mdns      {_mdns(ev, detail.get('mdnsAnsweredSecondsAgo'))}",
        f"  probes    {ev.get('probes')}{_reached(detail)}",
        f"  fleet     {'partition' if ev.get('partitioned') else 'no partition'}; "
        f"{'doubting itself' if ev.get('doubting') else 'trusts itself'}",
        f"  flapping  {'yes' if detail.get('flapping') else 'no'} "
        f"({detail.get('flapPercent')} % state change over the last 21 pings)",
        f"  installed {'yes' if detail.get('installed') else 'no'}",
        f"  rules, in order: {' > '.join(detail.get('rules', []))}",
    ]
    return "\n".join(lines)


def _reached(detail: dict[str, Any]) -> str:
    helpers = detail.get("reachableBy") or []
    return f" (reached by {', '.join(printable(str(h)) for h in helpers)})" if helpers else ""


def _ok(value: object) -> str:
    if value is None:
        return "not yet sent"
    return "ok" if value else "failed"


def _mdns(ev: dict[str, Any], answered_ago: object) -> str:
    if ev.get("mdns"):
        return f"announced; answered a query for its instance {answered_ago} s ago"
    if ev.get("mdns_withdrawn"):
        return "withdrawn (goodbye or expired)"
    if ev.get("mdns_cached"):
        if answered_ago is not None:
            return f"in the cache only: its last answer came {answered_ago} s ago"
        if ev.get("last_ping_ok") is False:
            return "in the cache only: no answer to a query for its instance this round"
        return "announced (asked only while SSH fails)"
    return "not announced"
