"""`clawd config check`: exit 0 with a summary, or exit 2 with what to fix; no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clawd.cli.main import main


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_valid_config_prints_one_line_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        {
            "backend": "postgres",
            "postgres": {"password": "hunter2"},
            "peers": [{"name": "gw-b", "ip": "127.0.0.2"}],
        },
    )
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "backend=postgres" in out and f"home={tmp_path}" in out and "static_peers=1" in out
    assert "hunter2" not in out


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"backend": "postgress"}, "backend: 'postgress' is not one of json, postgres"),
        ({"postgres": {"port": 70000}}, "postgres.port: 70000 is too large (maximum 65535)"),
        ('{"backend": "json",\n "peers": [}', "not valid JSON at line 2 column 12"),
        ({"postgress": {}}, "postgress: unknown key (did you mean 'postgres'?)"),
    ],
)
def test_invalid_config_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: object, expected: str
) -> None:
    path = _write(tmp_path, data)
    assert main(["config", "check", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert expected in captured.err
    assert "Traceback" not in captured.err


def test_installed_command_reports_errors_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, {"backend": 1, "postgres": {"password": "hunter2", "port": -1}})
    proc = subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "postgres.port: -1 is too small (minimum 1)" in proc.stderr


def test_default_config_location_follows_claw_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAW_HOME", str(tmp_path))
    _write(tmp_path, {})
    assert main(["config", "check"]) == 0
    assert f"home={tmp_path}" in capsys.readouterr().out


def test_a_config_from_before_detection_still_loads_and_says_what_is_unused(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, {"ping": {"flapTransitions": 4, "flapWindowSeconds": 600}})
    proc = subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    unused = [line for line in proc.stderr.splitlines() if "config_key_unused" in line]
    assert len(unused) == 2, proc.stdout + proc.stderr
    assert "key=ping.flapTransitions" in unused[0]
    assert "detection.flapHighPercent" in unused[0]


def test_a_config_with_a_probe_command_still_loads_and_says_it_is_unused(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, {"detection": {"probeCommand": "~/bin/clawd probe"}})
    proc = subprocess.run(
        [sys.executable, "-m", "clawd.cli.main", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    unused = [line for line in proc.stderr.splitlines() if "config_key_unused" in line]
    assert len(unused) == 1, proc.stdout + proc.stderr
    assert "key=detection.probeCommand" in unused[0] and "direct-tcpip" in unused[0]
