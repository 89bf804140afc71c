"""Who answers at an SSH address: the peer's own state.json, read over the connection.

mDNS says who a peer claims to be; the host key says which machine answers; the peer's
own state.json (`ssh.identityFile`, relative to its home) says which gateway id and lead
number that machine holds. It is read in the same exec as the install check, so proving
identity costs no extra round trip: `{ CHECK; } </dev/null >/dev/null 2>&1; s=$?; cat --
FILE; exit $s` gives the check's exit status and the file's bytes.
"""

from __future__ import annotations

import dataclasses
import json
import shlex

import asyncssh
import structlog

from clawd.config.sections import SshSettings
from clawd.core.model import Instance
from clawd.core.observations import PeerProof
from clawd.sources.ssh_client import Attempt, Connector, SshConnectError
from clawd.sources.ssh_link import HostKeyTrust, Link, LinkDown, run_command

log = structlog.get_logger("clawd.sources.pinger")

MAX_LEAD_NUMBER = 10**9


def identity_command(install_check: str, identity_file: str) -> str:
    path = identity_file[2:] if identity_file.startswith("~/") else identity_file
    return (
        f"{{ {install_check}\n}} </dev/null >/dev/null 2>&1; s=$?; "
        f"cat -- {shlex.quote(path)} 2>/dev/null; exit $s"
    )


def parse_identity(data: bytes) -> tuple[str | None, int | None]:
    """(gatewayId, leadNumber) from a state.json's bytes; (None, None) if it names none."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    gid, lead = doc.get("gatewayId"), doc.get("leadNumber")
    if not isinstance(gid, str) or not gid or len(gid) > 200:
        return None, None
    if isinstance(lead, bool) or not isinstance(lead, int) or not 0 <= lead <= MAX_LEAD_NUMBER:
        lead = None
    return gid, lead


def proof_of(key: HostKeyTrust, data: bytes) -> PeerProof:
    gid, lead = parse_identity(data)
    return PeerProof(key.trust, key.fingerprint, gid, lead)


async def read_identity(
    link: Link, install_check: str, identity_file: str, seconds: float
) -> tuple[bool | None, PeerProof | None, str]:
    """(installed, proof, error): the install check's verdict and what the peer's
    state.json says; (None, None, why) when the exec could not be run."""
    command = identity_command(install_check, identity_file)
    try:
        status, output = await link.run(command, seconds)
    except (OSError, LinkDown) as exc:
        return None, None, str(exc)
    except Exception as exc:  # asyncssh.Error: channel refused, connection lost
        return None, None, f"{type(exc).__name__}: {exc}"
    if status is None:
        return None, None, f"no exit status within {seconds:g}s"
    return status == 0, proof_of(link.key, output), ""


async def check_peer(
    link: Link, gateway_id: str, ssh: SshSettings, seconds: float
) -> tuple[bool | None, PeerProof | None]:
    """The pinger's periodic check of a peer: installed?, and who answers there.

    A peer whose state.json is gone (claw-clan lost, to be reinstalled) is still proven
    by a host key pinned for its gateway id: that key proved the id before.
    """
    installed, proof, error = await read_identity(
        link, ssh.install_check_command, ssh.identity_file, seconds
    )
    if proof is not None and proof.gateway_id is None and link.key.pinned_for == gateway_id:
        proof = dataclasses.replace(proof, gateway_id=gateway_id)
    if installed is None:
        log.warning("install_check_failed", gateway=gateway_id, error=error)
    return installed, proof


async def verify_at(
    connector: Connector, inst: Instance, default_user: str, ssh: SshSettings
) -> PeerProof | None:
    """Who answers at the address an announcement gave: a connection of its own (the pin
    for the announced gateway id enforced), one exec, closed. None if it could not be told;
    a proof that proves the id is pinned at once."""
    if not inst.ip:
        return None
    user = inst.ssh_user or default_user
    attempt = Attempt()
    try:
        conn = await connector.open_connection(
            inst.ip, inst.ssh_port, user, attempt, inst.gateway_id
        )
    except SshConnectError as exc:
        log.debug("identity_unreachable", gateway=inst.gateway_id, host=inst.ip, error=exc.error)
        return None
    try:
        command = identity_command(ssh.install_check_command, ssh.identity_file)
        status, output = await run_command(conn, command, ssh.connect_timeout_seconds)
    except (OSError, asyncssh.Error) as exc:
        log.debug("identity_unread", gateway=inst.gateway_id, host=inst.ip, error=str(exc))
        return None
    finally:
        conn.close()
    if status is None:
        return None
    proof = proof_of(attempt.key, output)
    if proof.proves(inst.gateway_id):
        await connector.remember_identity(inst.gateway_id, inst.ip, inst.ssh_port, attempt.key)
    return proof
