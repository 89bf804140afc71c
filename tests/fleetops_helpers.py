"""Shared set-up for the fleet-operation tests: a home with scripts/ and config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocking import setup_may_block
from sshpeers import SshFleet, SshPeer

from clawd.config.load import settings_from_data
from clawd.config.settings import Settings

if TYPE_CHECKING:
    from clawd.config.document import ConfigDocument

INSTALL_SCRIPT = """#!/bin/sh
# The test payload's installer: leaves a mark each time it runs.
set -e
echo run >> "$HOME/install-runs"
test -f "$HOME/.openclaw/claw-clan/config.json"
"""


def make_home(
    home: Path, fleet: SshFleet, *, install_script: str = INSTALL_SCRIPT, **sections: Any
) -> tuple[Settings, Path]:
    """A claw-clan home with an install payload; settings read back from its config.json."""
    (home / "scripts" / "lib").mkdir(parents=True)
    (home / "scripts" / "install.sh").write_text(install_script)
    (home / "scripts" / "install.sh").chmod(0o755)
    (home / "scripts" / "lib" / "common.sh").write_text("CLAW=1\n")
    config: dict[str, Any] = {
        "backend": "json",
        "instance": {"gatewayId": "gw-a", "name": "alpha", "leadNumber": 1, "sshUser": "claw"},
        "ssh": {
            "knownHosts": str(fleet.directory / "known_hosts"),
            "clientKeys": [str(fleet.client_key.path)],
            "connectTimeoutSeconds": 2,
            "installCheckCommand": fleet.install_check_command,
        },
        "discovery": {"enabled": False},
        "recovery": {"retryInitialSeconds": 0.3, "retryMaxSeconds": 1, "timeoutSeconds": 20},
        "distribution": {"timeoutSeconds": 5},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = home / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return settings_from_data(config, {}, config_dir=home), path


@setup_may_block
def document(config_path: Path) -> ConfigDocument:
    """The home's config.json as a daemon puts it in force (validated)."""
    from clawd.config.reload import load_in_force

    return load_in_force(config_path, {})[1]


def write_known_hosts(fleet: SshFleet) -> None:
    (fleet.directory / "known_hosts").write_text(fleet.known_hosts_text())


async def machine(fleet: SshFleet, root: Path, address: str, *, installed: bool = False) -> SshPeer:
    """A peer machine with a real home at `root` (its shell and SFTP work there), trusted
    in the fleet's known_hosts; `installed` puts claw-clan's folder there first."""
    if installed:
        (root / ".openclaw" / "claw-clan").mkdir(parents=True)
    else:
        root.mkdir()
    peer = await fleet.add_peer(address, root=root)
    write_known_hosts(fleet)
    return peer
