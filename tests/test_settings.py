"""config.json + environment -> Settings, and the messages a person sees when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from clawd.config.load import load_settings, settings_from_data
from clawd.config.settings import RETIRED_KEYS, Settings
from clawd.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.json"


def _error(data: dict[str, object], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_data(data, environ or {})
    return str(info.value)


def _aliases(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_example_config_is_valid_and_complete() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.backend == "json"
    assert settings.home == EXAMPLE.parent
    # Every key a user may set is spelled out in the example (home comes from CLAW_HOME).
    raw = json.loads(EXAMPLE.read_text())
    assert set(raw) == _aliases(Settings) - {"home"}
    retired = {tuple(key.split(".")) for key in RETIRED_KEYS}
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            alias = field.alias or name
            wanted = {k for k in _aliases(section) if (alias, k) not in retired}
            assert set(raw[alias]) == wanted, name


def test_defaults_match_the_seed() -> None:
    settings = settings_from_data({}, {})
    assert settings.backend == "json"
    assert settings.home == Path("~/.openclaw/claw-clan").expanduser()
    assert (settings.postgres.host, settings.postgres.port) == ("localhost", 5432)
    assert (settings.postgres.database, settings.postgres.user) == ("claw_clan", "claw")
    # Not the seed's 5-20 (written for one daemon): every machine of a fleet runs clawd on
    # the one database, and 5 connections each used up 100 max_connections at 17 machines
    # (bench/results.md, fleet-observers); a daemon writes one batch at a time.
    assert (settings.postgres.pool_min, settings.postgres.pool_max) == (1, 4)


def test_misspelt_backend_names_the_allowed_values() -> None:
    assert "backend: 'postgress' is not one of json, postgres" in _error({"backend": "postgress"})


def test_port_out_of_range_is_reported_with_the_limit() -> None:
    message = _error({"postgres": {"port": 70000}})
    assert "postgres.port: 70000 is too large (maximum 65535)" in message


def test_unknown_keys_are_reported_with_a_suggestion() -> None:
    assert "bakcend: unknown key (did you mean 'backend'?)" in _error({"bakcend": "json"})
    nested = _error({"ping": {"intervalSecond": 3}})
    assert "ping.intervalSecond: unknown key (did you mean 'intervalSeconds'?)" in nested


def test_several_problems_are_all_listed() -> None:
    message = _error({"backend": "x", "postgres": {"port": 0}, "peers": [{"name": "gw-b"}]})
    assert "3 problems" in message
    assert "peers[0].ip: required but missing" in message


def test_password_is_never_shown_in_errors() -> None:
    message = _error({"postgres": {"password": "hunter2", "port": "not-a-port"}, "x": 1})
    assert "hunter2" not in message
    secret_typed_wrong = _error({"postgres": {"password": ["hunter2"]}})
    assert "hunter2" not in secret_typed_wrong
    assert "postgres.password" in secret_typed_wrong


def test_gateway_id_cannot_escape_the_peers_folder() -> None:
    assert "instance.gatewayId" in _error({"instance": {"gatewayId": "../etc"}})


def test_static_peer_uses_the_seed_keys() -> None:
    settings = settings_from_data(
        {"peers": [{"name": "gw-b", "ip": "10.0.0.12", "sshUser": "claw", "sshPort": 2222}]}, {}
    )
    (peer,) = settings.peers
    assert (peer.name, peer.ip, peer.ssh_user, peer.ssh_port) == ("gw-b", "10.0.0.12", "claw", 2222)


def test_environment_wins_over_config_json() -> None:
    data = {
        "backend": "postgres",
        "postgres": {
            "host": "file-host",
            "port": 5432,
            "database": "file_db",
            "user": "u",
            "password": "file-pw",
        },
    }
    env = {
        "CLAW_PG_HOST": "env-host",
        "CLAW_PG_PORT": "6543",
        "CLAW_PG_DB": "env_db",
        "CLAW_PG_USER": "env_user",
        "CLAW_PG_PASS": "env-pw",
        "CLAW_HOME": "/srv/claw",
    }
    pg = settings_from_data(data, env).postgres
    assert (pg.host, pg.port, pg.database, pg.user) == ("env-host", 6543, "env_db", "env_user")
    assert pg.password.get_secret_value() == "env-pw"
    assert settings_from_data(data, env).home == Path("/srv/claw")
    # Unset or empty variables leave the file's values alone.
    assert settings_from_data(data, {"CLAW_PG_HOST": ""}).postgres.host == "file-host"


def test_bad_environment_value_is_reported() -> None:
    assert "postgres.port" in _error({}, {"CLAW_PG_PORT": "five"})


def test_summary_has_no_secret(tmp_path: Path) -> None:
    settings = settings_from_data(
        {"backend": "postgres", "postgres": {"password": "hunter2"}}, {}, config_dir=tmp_path
    )
    summary = settings.summary()
    assert "hunter2" not in summary
    assert "backend=postgres" in summary and "localhost:5432/claw_clan" in summary
    assert f"home={tmp_path}" in summary


def test_not_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "backend": "json",\n  "peers": [,]\n}\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert f"{path}: not valid JSON at line 3 column 13" in str(info.value)


def test_missing_file_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "config.json", environ={})


def test_non_object_json_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        load_settings(path, environ={})


def test_home_defaults_to_the_config_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    assert load_settings(path, environ={}).home == tmp_path
    assert load_settings(path, environ={"CLAW_HOME": "/x"}).home == Path("/x")
