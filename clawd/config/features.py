"""config.json's sections for the optional features: backup, recovery, distribution,
skills, history retention and metrics (the root model is clawd/config/settings.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from clawd.config.sections import Section
from clawd.core.schedule import parse_schedule


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
