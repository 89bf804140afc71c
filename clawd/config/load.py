"""Reading config.json and the environment into Settings, with errors that name the
file, the key and what is allowed."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clawd.config.errors import describe_validation_error
from clawd.config.settings import ClawEnvSource, Settings, default_config_path
from clawd.config.ssh_files import ssh_file_problems
from clawd.core.errors import ConfigError


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
        raise ConfigError(describe_validation_error(exc, source, Settings)) from None


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
    problems = ssh_file_problems(settings.ssh, settings.home)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{config_path}: {len(problems)} {noun}:\n  " + "\n  ".join(problems))
