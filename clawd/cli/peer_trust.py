"""`clawd peer trust GATEWAY`: show the host key GATEWAY's address presents, and pin it as
the operator's (trust `operator`: the peer may receive secrets) once the operator says yes.

The key is read in the SSH handshake (no login): what is shown is what any connection
there would be shown, so the operator compares it with `ssh-keygen -lf` on the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

import asyncssh

from clawd.cli.codes import EXIT_USER_ERROR
from clawd.cli.peer_known import known_peers
from clawd.config.load import load_settings
from clawd.config.settings import Settings
from clawd.core.logs import configure_logging
from clawd.core.trust import Trust
from clawd.sources.pins import PINS_FILE_NAME, Pin, key_text, read_pins, write_pins

EXIT_FAILED = 1


async def _host_key(host: str, port: int, seconds: float) -> asyncssh.SSHKey:
    """The server's host key, or OSError/asyncssh.Error/TimeoutError."""
    async with asyncio.timeout(seconds):
        key = await asyncssh.get_server_host_key(host, port)
    if key is None:
        raise asyncssh.Error(0, "the server offered no host key")
    return key


def _address(settings: Settings, args: argparse.Namespace, gid: str) -> tuple[str, int] | str:
    """Where to read GATEWAY's key: --host/--port, else the peer's address on record;
    or, as a string, why there is none."""
    known = known_peers(settings)
    inst = known.instance(gid)
    pin = known.pins.get(gid)
    host = args.host or (inst.ip if inst else None) or (pin.host if pin else None)
    if not host:
        if inst is None and pin is None:
            return f"no peer {gid!r} in config.json, the store or {PINS_FILE_NAME}; give --host"
        return f"no address known for {gid}; give --host HOST [--port PORT]"
    port = args.port or (inst.ssh_port if inst else None) or (pin.port if pin else None) or 22
    return host, port


def _confirm(gid: str, yes: bool) -> bool | None:
    """True/False: the operator's answer; None: nobody to ask."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return None
    try:
        answer = input(f"Trust this key for {gid}? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_peer_trust(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging("error")
    gid: str = args.gateway
    if gid == settings.instance.gateway_id:
        print(f"error: {gid} is this instance's own gateway id", file=sys.stderr)
        return EXIT_USER_ERROR
    where = _address(settings, args, gid)
    if isinstance(where, str):
        print(f"error: {where}", file=sys.stderr)
        return EXIT_USER_ERROR
    host, port = where
    timeout = settings.ssh.connect_timeout_seconds
    try:
        key = asyncio.run(_host_key(host, port, timeout))
    except TimeoutError:
        print(f"error: {host}:{port} did not answer within {timeout:g} s", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, asyncssh.Error) as exc:
        print(f"error: cannot read the host key of {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    path = settings.home / PINS_FILE_NAME
    pins = read_pins(path)
    fingerprint = key.get_fingerprint("sha256")
    print(f"{gid} at {host}:{port} presents {key.get_algorithm()} key {fingerprint}")
    old = pins.get(gid)
    if old is not None and old.key == key_text(key):
        print(f"pinned: the same key (trust {old.trust.value}, since {old.pinned_at or '?'})")
    elif old is not None:
        print(
            f"WARNING: this key DIFFERS from the one pinned for {gid}: {old.fingerprint} "
            f"(trust {old.trust.value}, last proven at {old.host}:{old.port}). The peer was "
            "re-keyed, or this is an impostor: check on the peer (`ssh-keygen -lf "
            "/etc/ssh/ssh_host_*_key.pub`) before you trust it"
        )
    else:
        print(f"pinned: nothing yet for {gid}")
    answer = _confirm(gid, args.yes)
    if answer is None:
        print(
            f"error: not trusting {gid} without a TTY to ask on; check the fingerprint above "
            "and run again with --yes",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    if not answer:
        print(f"not trusted: {gid}'s pin is unchanged")
        return EXIT_FAILED
    now = datetime.now(UTC).isoformat(timespec="seconds")
    # Read again: a running daemon may have pinned another peer meanwhile.
    pins = read_pins(path)
    pins[gid] = Pin(gid, key_text(key), fingerprint, Trust.OPERATOR, host, port, now)
    write_pins(path, pins)
    print(f"pinned {fingerprint} for {gid} with trust operator in {path}")
    return 0
