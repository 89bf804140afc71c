"""The unit file: valid for systemd, Type=notify, hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "clawd.service"
MAX_EXPOSURE = 2.0


def _installed_copy(tmp_path: Path) -> Path:
    """The unit as install-systemd writes it, pointing at this checkout's clawd."""
    clawd = Path(sys.executable).parent / "clawd"
    assert clawd.exists(), "clawd entry point missing from the venv"
    unit = tmp_path / "clawd.service"
    unit.write_text(UNIT.read_text().replace("/opt/clawd/bin/clawd", str(clawd)))
    return unit


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze not found: run scripts/install-system-deps.sh"
    return tool


def test_unit_verifies(tmp_path: Path) -> None:
    proc = subprocess.run(
        [_analyze(), "verify", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "clawd.service" not in proc.stderr  # no warnings about our unit


def test_unit_is_notify_with_reload_and_watchdog() -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert re.search(r"^ExecReload=\S+ reload$", text, re.M)
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text
    assert "StateDirectory=clawd" in text
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)


def test_security_exposure_is_low(tmp_path: Path) -> None:
    proc = subprocess.run(
        [_analyze(), "security", "--offline=true", "--no-pager", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for clawd.service: ([\d.]+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE
