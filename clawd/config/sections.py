"""config.json's sections that the monitoring core reads: postgres, instance, peers,
ping, detection, ssh, discovery, storage and log (the root model is clawd/config/settings.py).

Each section is a frozen pydantic model with camelCase keys; unknown keys are an error.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.alias_generators import to_camel

from clawd.config.errors import cross_field


class Section(BaseModel):
    """A config.json object: camelCase keys, unknown keys are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class PostgresSettings(Section):
    host: str = "localhost"
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(default="claw_clan", min_length=1)
    user: str = Field(default="claw", min_length=1)
    password: SecretStr = SecretStr("")
    # Small: every machine of the fleet runs clawd on this one database (one lease session
    # each besides), and a daemon writes one batch at a time; idle extra connections close
    # after asyncpg's 300 s. 100 max_connections then serve ~50 machines at rest.
    pool_min: int = Field(default=1, ge=1, le=100)
    pool_max: int = Field(default=4, ge=1, le=100)
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    @model_validator(mode="after")
    def _pool_ordered(self) -> PostgresSettings:
        if self.pool_min > self.pool_max:
            raise cross_field(
                [
                    (
                        "poolMin",
                        f"{self.pool_min} must not be above postgres.poolMax ({self.pool_max})",
                    )
                ]
            )
        return self

    def target(self) -> str:
        """host:port/database, for messages (never includes the password)."""
        return f"{self.host}:{self.port}/{self.database}"

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """What asyncpg.connect (and create_pool) needs to reach this server; it holds the
        password, so it is passed on, never logged."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password.get_secret_value() or None,
            "database": database or self.database,
            "timeout": self.connect_timeout_seconds,
        }


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_DOTTED_NUMBERS = re.compile(r"^[0-9.]+$")


def check_host(value: str) -> str:
    """An IPv4/IPv6 address or a DNS host name; `10.0.0.999` is neither."""
    if ":" in value:
        try:
            ipaddress.IPv6Address(value.removeprefix("[").removesuffix("]"))
        except ValueError:
            raise ValueError("must be an IPv6 address (like fd00::12) or a host name") from None
        return value
    if _DOTTED_NUMBERS.match(value):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(
                "must be an IPv4 address (four numbers 0-255, like 10.0.0.12) or a host name"
            ) from None
        return value
    name = value.removesuffix(".")
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise ValueError("must be an IP address or a host name (letters, digits, '-', '.')")
    return value


class InstanceSettings(Section):
    gateway_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    lead_number: int = Field(default=100, ge=0)
    ip: str = "127.0.0.1"
    ssh_user: str = Field(default_factory=lambda: os.environ.get("USER", "claw"), min_length=1)
    ssh_port: int = Field(default=22, ge=1, le=65535)
    version: str = "0.1.0"
    github_repo: str | None = None

    @field_validator("gateway_id")
    @classmethod
    def _safe_file_name(cls, value: str) -> str:
        # The gateway id names a file under peers/; keep it a plain name.
        if "/" in value or "\\" in value or value in {".", ".."} or "\x00" in value:
            raise ValueError("must not contain '/', '\\', NUL or be '.' or '..'")
        return value

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str) -> str:
        return check_host(value)


class StaticPeer(Section):
    name: str = Field(min_length=1, max_length=200)
    ip: str = Field(min_length=1, max_length=253)
    ssh_user: str | None = None
    ssh_port: int = Field(default=22, ge=1, le=65535)
    gateway_id: str | None = None
    # Leadership priority where mDNS cannot announce it (lower leads).
    lead_number: int | None = Field(default=None, ge=0)

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str) -> str:
        return check_host(value)

    @property
    def effective_gateway_id(self) -> str:
        """The id the fleet knows this peer by: its gatewayId, else its name."""
        return self.gateway_id or self.name


DEFAULT_PING_TIMEOUT = 5.0


class PingSettings(Section):
    interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Must be below the interval; when unset: 5 s, or half the interval if that is shorter.
    timeout_seconds: float = Field(default=DEFAULT_PING_TIMEOUT, gt=0, le=600)
    jitter_fraction: float = Field(default=0.1, ge=0, le=0.5)
    offline_after_missed: int = Field(default=3, ge=1, le=1000)
    # The peer's own mDNS answers (asked while SSH fails; a cached record does not count)
    # keep a silent peer "unresponsive" for at most this many misses: an answer is a hint.
    mdns_grace_misses: int = Field(default=10, ge=1, le=100_000)
    # Replaced by detection.flapHighPercent / flapLowPercent; accepted (and reported as
    # unused) so that an older config.json still starts the daemon.
    flap_transitions: int | None = Field(default=None, ge=2, le=1000)
    flap_window_seconds: float | None = Field(default=None, gt=0, le=86_400)

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        # An older config.json that shortened only the interval keeps working.
        if not isinstance(data, dict) or {"timeoutSeconds", "timeout_seconds"} & data.keys():
            return data
        interval = data.get("intervalSeconds", data.get("interval_seconds", 10.0))
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            return data
        try:
            seconds = float(interval)
        except OverflowError:  # a huge int: the field's own bound reports it
            return data
        if not (math.isfinite(seconds) and seconds > 0):
            return data
        return {**data, "timeoutSeconds": min(DEFAULT_PING_TIMEOUT, seconds / 2)}

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> PingSettings:
        if self.timeout_seconds >= self.interval_seconds:
            raise cross_field(
                [
                    (
                        "timeoutSeconds",
                        f"{_num(self.timeout_seconds)} must be less than "
                        f"ping.intervalSeconds ({_num(self.interval_seconds)})",
                    )
                ]
            )
        return self


def _num(value: float) -> str:
    return f"{value:g}"


class DetectionSettings(Section):
    """How a peer's status is decided (see clawd/decide/rules.py for the rule table)."""

    # accrual: phi over the peer's own heartbeat history; threshold: ping.offlineAfterMissed.
    detector: Literal["accrual", "threshold"] = "accrual"
    # Chosen on bench/detector_traces.py (see clawd/decide/suspicion.py DetectorSettings).
    phi_suspect: float = Field(default=2.0, gt=0, le=1000)
    phi_offline: float = Field(default=4.5, gt=0, le=1000)
    # Half-life of a peer's heartbeat-gap memory, in heartbeats (1,000 = ~2.8 h at 10 s).
    history_window: int = Field(default=1000, ge=10, le=1_000_000)
    # Floor of the regular gaps' spread (x interval), and the weight of the geometric
    # tail beyond the longest loss burst a peer has shown.
    min_std_fraction: float = Field(default=0.1, gt=0, le=10)
    tail_prior: float = Field(default=0.5, gt=0, le=100)
    # Back from offline only after this many successful pings in a row.
    recover_after_successes: int = Field(default=2, ge=1, le=1000)
    # Nagios-style flapping: percent state change over the last 21 ping results.
    flap_high_percent: float = Field(default=50.0, gt=0, le=100)
    flap_low_percent: float = Field(default=25.0, ge=0, le=100)
    # Indirect probes: this many other online, verified peers reach a suspect's SSH port
    # through a direct-tcpip channel on clawd's connection to them; 0 = off.
    indirect_probes: int = Field(default=3, ge=0, le=32)
    # Retired (see RETIRED_KEYS): helpers run no command any more; accepted (and reported
    # as unused) so that an older config.json still starts the daemon.
    probe_command: str | None = Field(default=None, min_length=1)
    probe_timeout_seconds: float = Field(default=3.0, gt=0, le=120)
    # With backend postgres: each machine is probed by this many others (rendezvous
    # hashing over the verified members), the rest of the fleet reads their verdict from
    # the shared database; 0 = every machine probes every peer (the full mesh). The JSON
    # backend has no shared record: it always probes every peer.
    observers: int = Field(default=3, ge=0, le=32)
    # Partition: at least this many peers, and this share of them, failing within the window.
    partition_min_peers: int = Field(default=3, ge=2, le=100_000)
    partition_fraction: float = Field(default=0.3, gt=0, le=1)
    partition_window_seconds: float | None = Field(default=None, gt=0, le=86_400)
    # Self-health guard: doubt ourselves when the event loop stalls this long, or when
    # this share of the peers fails at once; ping timeouts are stretched meanwhile.
    guard_loop_lag_seconds: float = Field(default=1.0, gt=0, le=600)
    guard_mass_failure_fraction: float = Field(default=0.8, gt=0, le=1)
    guard_min_peers: int = Field(default=4, ge=1, le=100_000)
    guard_timeout_stretch: float = Field(default=2.0, ge=1, le=20)
    guard_hold_seconds: float | None = Field(default=None, gt=0, le=86_400)

    @model_validator(mode="after")
    def _ordered(self) -> DetectionSettings:
        problems: list[tuple[str, str]] = []
        if self.phi_suspect > self.phi_offline:
            problems.append(
                (
                    "phiSuspect",
                    f"{_num(self.phi_suspect)} must not be above "
                    f"detection.phiOffline ({_num(self.phi_offline)})",
                )
            )
        if self.flap_low_percent > self.flap_high_percent:
            problems.append(
                (
                    "flapLowPercent",
                    f"{_num(self.flap_low_percent)} must not be above "
                    f"detection.flapHighPercent ({_num(self.flap_high_percent)})",
                )
            )
        if problems:
            raise cross_field(problems)
        return self


class SshSettings(Section):
    """How clawd reaches peers over SSH."""

    # known_hosts file(s) to trust; None = asyncssh's default (~/.ssh/known_hosts).
    known_hosts: str | None = None
    # known_hosts: only keys already there; accept-new: trust a peer's first key
    # (recorded in <home>/known_hosts) and refuse any later change.
    host_key_policy: Literal["known_hosts", "accept-new"] = "known_hosts"
    # Private keys to offer; empty = asyncssh's defaults (~/.ssh/id_*).
    client_keys: tuple[str, ...] = ()
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Below OpenSSH's MaxStartups (10) so a reconnect storm is not refused.
    max_concurrent_handshakes: int = Field(default=8, ge=1, le=1000)
    install_check_every_rounds: int = Field(default=10, ge=1, le=100_000)
    install_check_command: str = "test -d ~/.openclaw/claw-clan"
    # The peer's own state.json, relative to its home: read over SSH (with the install
    # check) to prove which gateway id answers there and what lead number it holds.
    identity_file: str = Field(default=".openclaw/claw-clan/state.json", min_length=1)
    reconnect_initial_seconds: float = Field(default=1.0, gt=0, le=600)
    reconnect_max_seconds: float = Field(default=60.0, gt=0, le=3600)


class DiscoverySettings(Section):
    enabled: bool = True
    service_type: str = "_claw-clan._tcp.local."
    # Interfaces (addresses) to use; None = all. ["127.0.0.1"] works on loopback.
    interfaces: tuple[str, ...] | None = None
    # Announced peers not yet proven over SSH: at most this many are tracked (the rest are
    # dropped), and each is tried at most verifyAttempts times (1, 2, 4, … ping intervals apart).
    max_unverified: int = Field(default=256, ge=1, le=100_000)
    verify_attempts: int = Field(default=3, ge=1, le=100)


class StorageSettings(Section):
    flush_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    batch_max_rows: int = Field(default=5000, ge=1, le=1_000_000)
    retry_initial_seconds: float = Field(default=1.0, gt=0, le=600)
    retry_max_seconds: float = Field(default=60.0, gt=0, le=3600)
    queue_max_rows: int = Field(default=200_000, ge=1000)
    # A peer file is rewritten at once on a status change, otherwise at most this often.
    peer_file_interval_seconds: float = Field(default=60.0, ge=0, le=3600)
    # With backend postgres: leader and epoch from a lease in the shared database
    # (clawd/keep/lease.py), so the fleet records one leader_change per real change.
    leader_lease: bool = True


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


def peer_problems(
    peers: tuple[StaticPeer, ...], own_gateway_id: str | None
) -> list[tuple[str, str]]:
    """Static peers that share a name or gateway id, or claim this instance's own id."""
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    ids: dict[str, int] = {}
    for index, peer in enumerate(peers):
        key = "gatewayId" if peer.gateway_id else "name"  # where the peer's id comes from
        gid = peer.effective_gateway_id
        if peer.name in names:
            first = names[peer.name]
            problems.append(
                (
                    f"[{index}].name",
                    f"{peer.name!r} is also peers[{first}].name; must be unique",
                )
            )
        names.setdefault(peer.name, index)
        if gid == own_gateway_id:
            problems.append(
                (f"[{index}].{key}", f"{gid!r} is instance.gatewayId, this instance's own id")
            )
        elif gid in ids and not (key == "name" and names[peer.name] != index):
            problems.append(
                (
                    f"[{index}].{key}",
                    f"gateway id {gid!r} is also the one of peers[{ids[gid]}]; must be unique",
                )
            )
        ids.setdefault(gid, index)
    return problems
