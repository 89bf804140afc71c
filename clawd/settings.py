"""config.json + `CLAW_*` environment, resolved in one place.

Precedence, highest first: `CLAW_PG_*` / `CLAW_HOME` environment variables,
then config.json, then the defaults below. Keys in config.json are camelCase,
like the seed's files (`sshUser`, `leadNumber`).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from clawd.config_errors import cross_field, describe_validation_error
from clawd.errors import ConfigError

DEFAULT_HOME = Path("~/.openclaw/claw-clan")

# Accepted in config.json for older files, read by nothing (see Settings.retired_keys).
RETIRED_KEYS = ("ping.flapTransitions", "ping.flapWindowSeconds")

# The seed's variable names; they win over config.json.
PG_ENV_VARS: dict[str, str] = {
    "CLAW_PG_HOST": "host",
    "CLAW_PG_PORT": "port",
    "CLAW_PG_DB": "database",
    "CLAW_PG_USER": "user",
    "CLAW_PG_PASS": "password",
}


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
    pool_min: int = Field(default=5, ge=1, le=100)
    pool_max: int = Field(default=20, ge=1, le=100)
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
    # mDNS presence alone keeps a silent peer "unresponsive" for this many misses.
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
    """How a peer's status is decided (see clawd/detection/rules.py for the rule table)."""

    # accrual: phi over the peer's own heartbeat history; threshold: ping.offlineAfterMissed.
    detector: Literal["accrual", "threshold"] = "accrual"
    # Chosen on bench/detector_traces.py (see clawd/detection/accrual.py DetectorSettings).
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
    # Indirect probes: this many other online peers run `probeCommand HOST:PORT`; 0 = off.
    indirect_probes: int = Field(default=3, ge=0, le=32)
    probe_command: str = Field(default="clawd probe", min_length=1)
    probe_timeout_seconds: float = Field(default=3.0, gt=0, le=120)
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
    reconnect_initial_seconds: float = Field(default=1.0, gt=0, le=600)
    reconnect_max_seconds: float = Field(default=60.0, gt=0, le=3600)


class DiscoverySettings(Section):
    enabled: bool = True
    service_type: str = "_claw-clan._tcp.local."
    # Interfaces (addresses) to use; None = all. ["127.0.0.1"] works on loopback.
    interfaces: tuple[str, ...] | None = None


class StorageSettings(Section):
    flush_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    batch_max_rows: int = Field(default=5000, ge=1, le=1_000_000)
    retry_initial_seconds: float = Field(default=1.0, gt=0, le=600)
    retry_max_seconds: float = Field(default=60.0, gt=0, le=3600)
    queue_max_rows: int = Field(default=200_000, ge=1000)
    # A peer file is rewritten at once on a status change, otherwise at most this often.
    peer_file_interval_seconds: float = Field(default=60.0, ge=0, le=3600)


class BackupSettings(Section):
    # "03:00" (local time of day) or an interval: "6h", "30m", "1h30m", "1d".
    schedule: str = "03:00"
    retention_days: int = Field(default=30, ge=1)
    keep_min: int = Field(default=3, ge=1)
    # After each backup: checksum + full read of every file.
    verify: bool = True
    # Full pg_restore into a scratch database: "each" backup, "off", or a schedule of its own.
    verify_restore: str = "each"
    # Directory holding pg_dump/pg_restore; None = the newest /usr/lib/postgresql/*/bin, else PATH.
    pg_bin_dir: str | None = None
    # auto = zstd where pg_dump supports it (16+), else gzip.
    compress: Literal["auto", "zstd", "gzip", "none"] = "auto"
    # How long a backup waits for another one (another clawd, a cron job) to finish.
    lock_wait_seconds: float = Field(default=600.0, ge=0, le=86_400)
    # pg_dump / pg_restore are killed after this long.
    timeout_seconds: float = Field(default=6 * 3600.0, gt=0, le=7 * 86_400)

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        from clawd.backup.schedule import parse_schedule

        try:
            parse_schedule(value)
        except ValueError:
            raise ValueError(
                'must be a time of day like "03:00" or an interval like "6h", "30m", "1h30m"'
            ) from None
        return value

    @field_validator("verify_restore")
    @classmethod
    def _valid_verify_restore(cls, value: str) -> str:
        from clawd.backup.schedule import parse_schedule

        if value not in ("each", "off"):
            try:
                parse_schedule(value)
            except ValueError:
                raise ValueError(
                    'must be "each", "off", or a schedule like "04:00" or "24h"'
                ) from None
        return value


class RecoverySettings(Section):
    """Reinstalling claw-clan on peers that come back without it (leader only)."""

    enabled: bool = True
    # Run on the peer after the payload is copied; its exit status decides success.
    install_command: str = "sh ~/.openclaw/claw-clan/scripts/install.sh"
    # Where the payload goes on the peer, relative to the SSH user's home.
    remote_home: str = ".openclaw/claw-clan"
    timeout_seconds: float = Field(default=300.0, gt=0, le=86_400)
    retry_initial_seconds: float = Field(default=60.0, gt=0, le=86_400)
    retry_max_seconds: float = Field(default=3600.0, gt=0, le=7 * 86_400)


class DistributionSettings(Section):
    """Pushing config.json to online peers (leader only, and `clawd config push`)."""

    enabled: bool = True
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Peers handled at once; below OpenSSH's MaxStartups.
    concurrency: int = Field(default=8, ge=1, le=100)


class SkillsSettings(Section):
    """Skills under <home>/skills, updated from instance.githubRepo."""

    # An interval ("1h"), a time of day ("04:00") or "off"; `clawd skills sync` works always.
    sync_interval: str = "1h"
    # Branch or tag to follow; None = the remote's default branch.
    ref: str | None = None
    git_timeout_seconds: float = Field(default=300.0, gt=0, le=86_400)

    @field_validator("sync_interval")
    @classmethod
    def _valid_interval(cls, value: str) -> str:
        from clawd.backup.schedule import parse_schedule

        if value != "off":
            try:
                parse_schedule(value)
            except ValueError:
                raise ValueError(
                    'must be "off", an interval like "1h" or a time like "04:00"'
                ) from None
        return value


class HistorySettings(Section):
    """How long PostgreSQL keeps history (pruned by the leader, in small batches)."""

    retention_days: int | None = Field(default=90, ge=1)
    # incident_log and skill_audit are kept for ever unless set.
    incident_retention_days: int | None = Field(default=None, ge=1)
    skill_audit_retention_days: int | None = Field(default=None, ge=1)
    prune_interval_seconds: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    prune_batch_rows: int = Field(default=5000, ge=100, le=1_000_000)


class MetricsSettings(Section):
    """Prometheus endpoint; off unless `listen` is set, e.g. "127.0.0.1:9464"."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError('must be "HOST:PORT", e.g. "127.0.0.1:9464"')
        return value

    def address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


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


class ClawEnvSource(PydanticBaseSettingsSource):
    """The seed's `CLAW_PG_*` variables and `CLAW_HOME`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        postgres = {
            key: self._environ[var] for var, key in PG_ENV_VARS.items() if self._environ.get(var)
        }
        if postgres:
            out["postgres"] = postgres
        if self._environ.get("CLAW_HOME"):
            out["home"] = self._environ["CLAW_HOME"]
        return out


class Settings(BaseSettings):
    """The whole daemon configuration."""

    model_config = SettingsConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    backend: Literal["json", "postgres"] = "json"
    home: Path = DEFAULT_HOME
    postgres: PostgresSettings = PostgresSettings()
    instance: InstanceSettings = Field(default_factory=InstanceSettings)
    peers: tuple[StaticPeer, ...] = ()
    ping: PingSettings = PingSettings()
    detection: DetectionSettings = DetectionSettings()
    ssh: SshSettings = SshSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    storage: StorageSettings = StorageSettings()
    backup: BackupSettings = BackupSettings()
    recovery: RecoverySettings = RecoverySettings()
    distribution: DistributionSettings = DistributionSettings()
    skills: SkillsSettings = SkillsSettings()
    history: HistorySettings = HistorySettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("peers")
    @classmethod
    def _peers_distinct(
        cls, peers: tuple[StaticPeer, ...], info: ValidationInfo
    ) -> tuple[StaticPeer, ...]:
        # A field validator (not a model one) so that it reports even when another section
        # has errors too; `instance` is declared before `peers`, so it is validated by now.
        instance = info.data.get("instance")
        own = instance.gateway_id if isinstance(instance, InstanceSettings) else None
        problems = peer_problems(peers, own)
        if problems:
            raise cross_field(problems)
        return peers

    def retired_keys(self) -> list[str]:
        """Keys an older config.json may still set that clawd no longer reads."""
        ping = self.ping
        values = (ping.flap_transitions, ping.flap_window_seconds)
        return [key for key, value in zip(RETIRED_KEYS, values, strict=True) if value is not None]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what load_settings() hands over through init: it has already
        # merged the file and the environment in the documented order.
        return (init_settings,)

    @property
    def peers_dir(self) -> Path:
        return self.home / "peers"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def skills_dir(self) -> Path:
        return self.home / "skills"

    @property
    def scripts_dir(self) -> Path:
        return self.home / "scripts"

    def summary(self) -> str:
        """One line for `clawd config check`: no secrets."""
        target = f" ({self.postgres.target()})" if self.backend == "postgres" else ""
        return (
            f"config ok: backend={self.backend}{target} home={self.home} "
            f"gateway={self.instance.gateway_id} static_peers={len(self.peers)}"
        )


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("CLAW_HOME") or DEFAULT_HOME).expanduser()


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    return default_home(environ) / "config.json"


def read_config_bytes(path: Path) -> bytes:
    """config.json's bytes, with errors that name the file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (copy config.example.json there to start)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse config.json into a dict, with errors that name the file and position."""
    return parse_config(path, read_config_bytes(path))


def parse_config(path: Path, raw: bytes) -> dict[str, Any]:
    """The JSON object in config.json's bytes `raw`; errors name the file and position."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object, found {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def settings_from_data(
    data: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    config_dir: Path | None = None,
    source: str = "config.json",
) -> Settings:
    """Validate config data plus environment overrides into Settings."""
    env = os.environ if environ is None else environ
    merged = _merge(dict(data), ClawEnvSource(Settings, env)())
    if "home" not in merged and config_dir is not None:
        merged["home"] = str(config_dir)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    check_files: bool = False,
) -> Settings:
    """Load and validate config.json (default `<home>/config.json`) plus environment.

    Without a `home` key, the home is `CLAW_HOME`, else the config file's directory.
    check_files: also read the SSH files it names (known_hosts, client keys), as
    `clawd run`, `clawd config check` and a live reload do; a report command does not
    need them.
    """
    env = os.environ if environ is None else environ
    config_path = (path or default_config_path(env)).expanduser()
    data = read_config_file(config_path)
    settings = settings_from_data(
        data, env, config_dir=config_path.parent.resolve(), source=str(config_path)
    )
    if check_files:
        check_ssh_files(settings, config_path)
    return settings


def check_ssh_files(settings: Settings, config_path: Path) -> None:
    """ConfigError unless the SSH files `settings` names (known_hosts, client keys) read."""
    from clawd.ssh_files import ssh_file_problems

    problems = ssh_file_problems(settings.ssh, settings.home)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{config_path}: {len(problems)} {noun}:\n  " + "\n  ".join(problems))
