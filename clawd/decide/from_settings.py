"""What the fleet keeper takes from Settings: the reconciler's thresholds, the guard's
settings, configured peers -- plain values, so that the pure decision modules import
nothing of the configuration."""

from __future__ import annotations

from datetime import timedelta

from clawd.config.settings import Settings, lease_on
from clawd.core.model import Instance
from clawd.core.observations import MDNS_QUERY_WAIT_SECONDS
from clawd.decide.guard import GuardSettings
from clawd.decide.suspicion import DetectorSettings
from clawd.decide.view import Thresholds

# mDNS finds announced peers ~1.2 s after clawd starts here (zeroconf's own start-up, then
# the answers): with discovery on, the start-up election waits this long at least for
# peers the store does not know yet.
DISCOVERY_SETTLE_SECONDS = 3.0


def thresholds(settings: Settings) -> Thresholds:
    ping, d = settings.ping, settings.detection
    window = d.partition_window_seconds or 2 * ping.interval_seconds + ping.timeout_seconds
    # Two rounds: a peer whose first round came before its SSH link was up gets another.
    settle = 2 * ping.interval_seconds + ping.timeout_seconds
    discovery = DISCOVERY_SETTLE_SECONDS if settings.discovery.enabled else 0.0
    # An mDNS answer counts for one ping round: the longest gap between two failed pings
    # (jitter, one failing at once and the next by timeout) and the query's own wait.
    round_seconds = ping.interval_seconds * (1 + ping.jitter_fraction) + ping.timeout_seconds
    return Thresholds(
        mdns_grace_misses=ping.mdns_grace_misses,
        mdns_fresh=timedelta(seconds=round_seconds + MDNS_QUERY_WAIT_SECONDS),
        detector=DetectorSettings(
            kind=d.detector,
            phi_suspect=d.phi_suspect,
            phi_offline=d.phi_offline,
            offline_after_missed=ping.offline_after_missed,
            window=d.history_window,
            min_std_fraction=d.min_std_fraction,
            tail_prior=d.tail_prior,
        ),
        interval_seconds=ping.interval_seconds,
        recover_after=d.recover_after_successes,
        flap_high=d.flap_high_percent,
        flap_low=d.flap_low_percent,
        probes=d.indirect_probes,
        # Long enough for the helpers' own timeouts and an SSH round trip to them.
        probe_wait=timedelta(seconds=2 * d.probe_timeout_seconds + ping.timeout_seconds),
        partition_min_peers=d.partition_min_peers,
        partition_fraction=d.partition_fraction,
        partition_window=timedelta(seconds=window),
        settle=timedelta(seconds=max(settle, discovery)),
        settle_min=timedelta(seconds=discovery),
        # Only a shared record lets a machine learn the verdicts on peers it does not probe;
        # they are read on the leader lease's session (keep/verdicts.py).
        observers=d.observers if lease_on(settings) else 0,
        shared_record=lease_on(settings),
    )


def static_peers(settings: Settings) -> list[Instance]:
    return [
        Instance(
            gateway_id=p.gateway_id or p.name,
            name=p.name,
            ip=p.ip,
            ssh_user=p.ssh_user or settings.instance.ssh_user,
            ssh_port=p.ssh_port,
            lead_number=p.lead_number,
        )
        for p in settings.peers
    ]


def guard_settings(settings: Settings) -> GuardSettings:
    d, ping = settings.detection, settings.ping
    # Unset: long enough for every peer to be pinged again, with stretched timeouts.
    hold = d.guard_hold_seconds or (
        2 * ping.interval_seconds + ping.timeout_seconds * d.guard_timeout_stretch
    )
    return GuardSettings(
        loop_lag_seconds=d.guard_loop_lag_seconds,
        mass_failure_fraction=d.guard_mass_failure_fraction,
        min_peers=d.guard_min_peers,
        timeout_stretch=d.guard_timeout_stretch,
        hold_seconds=hold,
    )
