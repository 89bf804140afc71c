"""The files clawd's SSH trusts and offers: known_hosts and client keys, read with errors
that name the file (ConfigError), never a bare UnicodeDecodeError or asyncssh error.

Blocking (read, parse): call them from a thread when on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncssh

from clawd.config.sections import SshSettings
from clawd.core.errors import ConfigError

TOFU_FILE_NAME = "known_hosts"


def default_known_hosts() -> Path:
    return Path("~/.ssh/known_hosts").expanduser()


def known_hosts_path(ssh: SshSettings) -> Path:
    """The known_hosts file the `known_hosts` policy trusts."""
    return Path(ssh.known_hosts).expanduser() if ssh.known_hosts else default_known_hosts()


def read_text(path: Path) -> str:
    """`path` as UTF-8 text; ConfigError naming the file (and the line of a bad byte)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
        ) from None


def parse_known_hosts(text: str, path: Path) -> asyncssh.SSHKnownHosts:
    """known_hosts text; ConfigError naming the file and the first line asyncssh refuses."""
    try:
        return asyncssh.import_known_hosts(text)
    except ValueError as exc:
        for number, line in enumerate(text.splitlines(), 1):
            try:
                asyncssh.import_known_hosts(line + "\n")
            except ValueError:
                raise ConfigError(f"{path}: line {number}: {exc}") from None
        raise ConfigError(f"{path}: {exc}") from None


def read_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    return parse_known_hosts(read_text(path), path)


def read_client_keys(paths: Sequence[str]) -> list[asyncssh.SSHKeyPair]:
    """The private keys at `paths`; ConfigError naming the first file that cannot be used."""
    keys: list[asyncssh.SSHKeyPair] = []
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            keys.extend(asyncssh.load_keypairs([str(path)]))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ConfigError(f"{path}: not a usable private key: {exc}") from None
    return keys


def ssh_file_problems(ssh: SshSettings, home: Path) -> list[str]:
    """One line per SSH file the settings name that is missing or cannot be read."""
    problems: list[str] = []
    if ssh.known_hosts:
        path = known_hosts_path(ssh)
        try:
            text = read_text(path)
            if ssh.host_key_policy == "known_hosts":
                parse_known_hosts(text, path)
        except ConfigError as exc:
            problems.append(f"ssh.knownHosts: {exc}")
    elif ssh.host_key_policy == "known_hosts" and default_known_hosts().exists():
        try:
            read_known_hosts(default_known_hosts())
        except ConfigError as exc:
            problems.append(f"ssh.knownHosts (unset: the default file): {exc}")
    if ssh.host_key_policy == "accept-new" and (home / TOFU_FILE_NAME).exists():
        try:
            read_text(home / TOFU_FILE_NAME)
        except ConfigError as exc:
            problems.append(f"ssh.hostKeyPolicy (accept-new records keys here): {exc}")
    for index, raw in enumerate(ssh.client_keys):
        try:
            read_client_keys([raw])
        except ConfigError as exc:
            problems.append(f"ssh.clientKeys[{index}]: {exc}")
    return problems
