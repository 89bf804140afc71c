"""config.json's `detection` and `ping` sections turned into the plain values the pure
decision modules take, so that those modules import nothing of the configuration."""

from __future__ import annotations

from clawd.detection.guard import GuardSettings
from clawd.settings import Settings


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
