"""Self-health guard (Lifeguard's idea): before declaring the fleet dead, doubt ourselves.

Two signs that the fault is here, not out there:
- the event loop stalled (a paused VM, a swap storm, a blocking bug): every timer fired
  late, so every ping in flight "timed out" and every heartbeat gap looks long;
- nearly every peer failed at once (`massFailureFraction`): more likely our own link.

While doubting, offline verdicts are held, ping timeouts are stretched, and heartbeat gaps
are not learned. A loop stall is doubted for `holdSeconds` after the last stall. A mass
failure is doubted for at most `holdSeconds`: if it persists, it is not us but the network,
and partition detection takes over (one `partition` incident, not N `offline`).
Each episode is one `self_doubt` journal line and one `self_trust` line when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The guard's plain values (from config.json's `detection.guard*`, see
    clawd/decide/from_settings.py): this module knows nothing of config.json."""

    loop_lag_seconds: float = 1.0
    mass_failure_fraction: float = 0.8
    min_peers: int = 4
    timeout_stretch: float = 2.0
    # How long a doubt lasts: long enough for every peer to be pinged again, with
    # stretched timeouts (the caller works it out from the ping interval and timeout).
    hold_seconds: float = 25.0


LAG = "event loop stalled"
MASS = "most peers failed at once"


@dataclass(frozen=True, slots=True)
class Change:
    doubting: bool
    reason: str
    fields: dict[str, float | int | str]


class SelfHealthGuard:
    def __init__(self, settings: GuardSettings) -> None:
        self._last: dict[str, bool] = {}  # each peer's latest ping result
        self._failing = 0
        self._lag_until = 0.0
        self._worst_lag = 0.0
        self._mass_since: float | None = None
        self._mass_spent = False  # a mass failure outlived the hold: not us
        self._since = 0.0
        self.doubting = False
        self.reason = ""
        self.episodes = 0
        self.configure(settings)

    def configure(self, settings: GuardSettings) -> None:
        self.s = settings
        self.hold = settings.hold_seconds

    @property
    def stretch(self) -> float:
        return self.s.timeout_stretch if self.doubting else 1.0

    def loop_lag(self, lag: float, now: float) -> None:
        if lag >= self.s.loop_lag_seconds:
            self._lag_until = now + self.hold
            self._worst_lag = max(self._worst_lag, lag)

    def ping(self, gateway_id: str, ok: bool) -> None:
        before = self._last.get(gateway_id)
        if before is None and not ok:
            return  # never answered yet (still connecting at start): no sign about us
        self._last[gateway_id] = ok
        if before is not None and not before:
            self._failing -= 1
        if not ok:
            self._failing += 1

    def forget(self, keep: set[str]) -> None:
        """Peers no longer pinged do not count."""
        for gid in [g for g in self._last if g not in keep]:
            if not self._last.pop(gid):
                self._failing -= 1

    def _mass_failure(self) -> bool:
        total = len(self._last)
        return total >= self.s.min_peers and (self._failing >= self.s.mass_failure_fraction * total)

    def poll(self, now: float) -> Change | None:
        """The guard's verdict now; a Change when it differs from the last one."""
        mass = self._mass_failure()
        if not mass:
            self._mass_since, self._mass_spent = None, False
        elif self._mass_since is None and not self._mass_spent:
            self._mass_since = now
        if self._mass_since is not None and now - self._mass_since > self.hold:
            self._mass_since, self._mass_spent = None, True
        lagging = now < self._lag_until
        reason = LAG if lagging else MASS if self._mass_since is not None else ""
        if bool(reason) == self.doubting:
            return None
        if reason:
            self.doubting, self.reason, self._since = True, reason, now
            self.episodes += 1
            fields: dict[str, float | int | str] = {"reason": reason}
            if lagging:
                fields["lag_ms"] = round(self._worst_lag * 1000)
            else:
                fields["failing"] = self._failing
                fields["peers"] = len(self._last)
            fields["timeout_stretch"] = self.s.timeout_stretch
            return Change(True, reason, fields)
        previous = self.reason
        self.doubting, self.reason, self._worst_lag = False, "", 0.0
        seconds = round(now - self._since, 1)
        after: dict[str, float | int | str] = {"reason": previous, "doubted_seconds": seconds}
        if self._mass_spent:
            after["verdict"] = "the failures are real: judged as a partition"
        return Change(False, previous, after)
