"""An installed clawd (a wheel, not the checkout) carries its schema files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("clawd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("clawd/migrations/"))
    expected = sorted(f"clawd/migrations/{p.name}" for p in (ROOT / "migrations").glob("*.sql"))
    assert shipped == expected
    assert "clawd/cli/main.py" in names
