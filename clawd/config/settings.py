"""The whole daemon configuration: the root model over the sections, and who this
instance is.

Precedence, highest first: `CLAW_PG_*` / `CLAW_HOME` environment variables,
then config.json, then the defaults. Keys in config.json are camelCase,
like the seed's files (`sshUser`, `leadNumber`). Reading the file is
clawd/config/load.py; the sections are clawd/config/sections.py and
clawd/config/features.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from clawd.config.errors import cross_field
from clawd.config.features import (
    BackupSettings,
    DistributionSettings,
    HistorySettings,
    MetricsSettings,
    RecoverySettings,
    SkillsSettings,
)
from clawd.config.notify import NotifySettings
from clawd.config.sections import (
    DetectionSettings,
    DiscoverySettings,
    InstanceSettings,
    LogSettings,
    PingSettings,
    PostgresSettings,
    SshSettings,
    StaticPeer,
    StorageSettings,
    peer_problems,
)
from clawd.core.model import Instance

DEFAULT_HOME = Path("~/.openclaw/claw-clan")

# Accepted in config.json for older files, read by nothing (see Settings.retired_keys).
_FLAP_FIX = "remove it: flapping is now detection.flapHighPercent / flapLowPercent"
RETIRED_KEYS: dict[str, str] = {  # key -> what to do about it
    "ping.flapTransitions": _FLAP_FIX,
    "ping.flapWindowSeconds": _FLAP_FIX,
    "detection.probeCommand": "remove it: helpers are probed through their SSH connection "
    "(direct-tcpip), no command runs on them",
}

# The seed's variable names; they win over config.json.
PG_ENV_VARS: dict[str, str] = {
    "CLAW_PG_HOST": "host",
    "CLAW_PG_PORT": "port",
    "CLAW_PG_DB": "database",
    "CLAW_PG_USER": "user",
    "CLAW_PG_PASS": "password",
}


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
    notify: NotifySettings = NotifySettings()
    log: LogSettings = LogSettings()

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        try:
            return value.expanduser()
        except RuntimeError:  # `~name` of a user this machine does not have
            raise ValueError("names a user this machine does not have (~user)") from None

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
        values = (ping.flap_transitions, ping.flap_window_seconds, self.detection.probe_command)
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


def lease_on(settings: Settings) -> bool:
    """Does the leader lease decide leader and epoch (backend postgres,
    `storage.leaderLease`)? Its session also reads the fleet's verdicts (keep/verdicts.py)."""
    return settings.backend == "postgres" and settings.storage.leader_lease


def self_instance(settings: Settings) -> Instance:
    """This instance as the fleet knows it (from config.json's `instance`)."""
    me = settings.instance
    return Instance(
        gateway_id=me.gateway_id,
        name=me.name,
        lead_number=me.lead_number,
        ip=me.ip,
        ssh_user=me.ssh_user,
        ssh_port=me.ssh_port,
        version=me.version,
        github_repo=me.github_repo,
    )


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("CLAW_HOME") or DEFAULT_HOME).expanduser()


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    return default_home(environ) / "config.json"
