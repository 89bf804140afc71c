"""Fencing leader actions on the peer itself, so split-brain leaders cannot both act.

Each leader action first claims the peer with a :class:`FenceToken` (leadership epoch,
lead number, gateway id). A small POSIX-sh script, run on the peer over the action's SSH
connection, keeps the strongest token it has seen and refuses weaker ones: a stale
leader is turned away by the peer, whatever that leader believes. A reinstall also
takes the marker ``reinstall-<EPOCH>``: the first claimant of an epoch owns it (and may
retry its own failed install), so two leaders of the same epoch (both believe they lead;
they cannot see each other) reinstall a peer at most once between them.

On the peer, beside claw-clan's home (``<dirname(remoteHome)>/.claw-clan-fence/``):

* ``token``: one line ``EPOCH LEAD GATEWAYHEX`` (decimal; the gateway id's UTF-8 bytes in
  lowercase hex, so no id can break the shell script or the line format);
* ``reinstall-<EPOCH>/owner``: the hex gateway id that owns the epoch's reinstall;
* ``lock/``: the mutex (``mkdir``), with ``lock/t`` its holder's start time.

The script prints one line (after whatever the login shell prints), ``STORED`` being
``none``, ``garbage`` or ``EPOCH:LEAD:GATEWAYHEX`` (the token held before this claim)::

    clawd-fence accepted STORED
    clawd-fence already STORED OWNERHEX|unknown
    clawd-fence stale STORED
    clawd-fence busy
"""

from __future__ import annotations

import enum
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from posixpath import basename, dirname, join

import structlog

from clawd.act.fleetops.remote import RemoteError, RemoteHost
from clawd.config.settings import Settings
from clawd.core.model import Instance
from clawd.decide.view import FleetView

log = structlog.get_logger("clawd.fence")

# Decimal fields stay within what every shell's `test -lt` handles (64-bit).
MAX_NUMBER = 10**18 - 1
# A leader without a lead number ranks below every numbered one.
UNRANKED_LEAD = MAX_NUMBER
MAX_GATEWAY_HEX = 2048
# A lock is held for milliseconds; one this old belongs to a script that died.
LOCK_STALE_SECONDS = 30
SPIN_SECONDS = 0.1
MAX_SPINS = 300

_HEX = re.compile(r"[0-9a-f]+")
_STORED = re.compile(r"(\d{1,18}):(\d{1,18}):([0-9a-f]+)")


class FenceError(RemoteError):
    """The fence could not be read or claimed on the peer (not a refusal)."""


@dataclass(frozen=True, slots=True)
class FenceToken:
    """Who claims a peer: the claimant's leadership epoch, lead number and gateway id."""

    epoch: int
    lead_number: int
    gateway_id: str

    def __post_init__(self) -> None:
        for name, value in (("epoch", self.epoch), ("lead_number", self.lead_number)):
            if not 0 <= value <= MAX_NUMBER:
                raise ValueError(f"fence {name} out of range: {value}")
        if not self.gateway_id or len(self.gateway_hex()) > MAX_GATEWAY_HEX:
            raise ValueError("fence gateway id empty or too long")

    def rank_key(self) -> tuple[int, int, str]:
        """Sorts the strongest token first: `min(tokens, key=FenceToken.rank_key)` wins.

        A higher epoch wins; within an epoch the lower lead number, then the lower
        gateway id, as leader election ranks instances. Gateway ids compare by code
        point, which is the order of their UTF-8 bytes and so of the hex the peer's
        script compares.
        """
        return (-self.epoch, self.lead_number, self.gateway_id)

    def outranks(self, other: FenceToken) -> bool:
        return self.rank_key() < other.rank_key()

    def gateway_hex(self) -> str:
        return self.gateway_id.encode("utf-8", "surrogatepass").hex()

    def line(self) -> str:
        """The token file's line (without the newline)."""
        return f"{self.epoch} {self.lead_number} {self.gateway_hex()}"

    def __str__(self) -> str:
        return f"epoch {self.epoch}, lead {self.lead_number}, gateway {self.gateway_id!r}"


def token_for(view: FleetView) -> FenceToken:
    """The token this instance claims peers with, given its current view."""
    return token_of(view.me, view.epoch)


def settings_token(settings: Settings) -> FenceToken:
    """This instance's token outside the daemon, which alone knows an epoch: epoch 0."""
    me = settings.instance
    return token_of(Instance(me.gateway_id, me.name, me.lead_number), 0)


def token_of(me: Instance, epoch: int) -> FenceToken:
    # Clamped, not refused: an absurd number in a config must not stop leader work.
    lead = UNRANKED_LEAD if me.lead_number is None else min(me.lead_number, UNRANKED_LEAD)
    return FenceToken(min(max(epoch, 0), MAX_NUMBER), lead, me.gateway_id)


def stored_fields(stored: FenceToken) -> dict[str, object]:
    """A stronger token a peer holds, as the fields of a `..._fenced` log line."""
    return {
        "stored_epoch": stored.epoch,
        "stored_lead": stored.lead_number,
        "stored_gateway": stored.gateway_id,
    }


# Told a stronger token and the gateway id of the peer whose fence reported it.
OnFenced = Callable[[FenceToken, str], None]


def notify_fenced(callback: OnFenced | None, stored: FenceToken, reported_by: str) -> None:
    """Pass a peer's stronger token to the daemon's callback, if any."""
    if callback is None:
        return
    try:
        callback(stored, reported_by)
    except Exception:
        # A faulty callback must not end the leader loop that noticed the fence.
        log.exception("on_fenced_failed", stored_epoch=stored.epoch)


class FenceKind(enum.Enum):
    ACCEPTED = "accepted"
    # Another claimant of this epoch already owns the peer's reinstall.
    ALREADY = "already"
    # The peer holds a token that outranks ours: we are a stale leader.
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class FenceResult:
    kind: FenceKind
    # The token the peer held before this claim (None: none, or garbage).
    stored: FenceToken | None = None
    # The peer's token file was unreadable and has been replaced (ACCEPTED) or ignored.
    garbage: bool = False
    # ALREADY: the gateway id that owns this epoch's reinstall (None when unreadable).
    owner: str | None = None


def fence_dir(remote_home: str) -> str:
    """The fence folder beside claw-clan's home on the peer, never inside it.

    The install check looks for the home folder: the fence must not make a peer
    without claw-clan look installed.
    """
    home = remote_home.rstrip("/")
    name = basename(home)
    if name in ("", ".", "..", "~"):
        raise FenceError(f"no place for the fence beside recovery.remoteHome {remote_home!r}")
    return join(dirname(home), f".{name}-fence")


def _shell_path(path: str) -> str:
    """`path` quoted for sh, keeping a leading `~` meaning the login's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


# Kept to builtins plus mkdir/rmdir/rm/mv/date/expr/sleep, present on any peer with sh.
# The lock only orders read-compare-write of the token; the reinstall marker's `mkdir`
# is atomic by itself, so even a lock broken by two waiters at once (both took the same
# dead holder for stale) cannot give two owners of one epoch's reinstall.
_SCRIPT = r"""
LC_ALL=C; export LC_ALL
f="$d/token"; k="$d/lock"; p=${d%/*}
if [ -n "$p" ] && [ "$p" != "$d" ]; then mkdir -p "$p" || exit 3; fi
umask 077
num() { case $1 in ''|*[!0-9]*) return 1;; esac; [ ${#1} -le 18 ]; }
hex() { case $1 in ''|*[!0-9a-f]*) return 1;; esac; [ $((${#1} % 2)) -eq 0 ]; }
unlock() { rm -f "$k/t"; rmdir "$k" 2>/dev/null; }
mkdir -p "$d" || exit 3
i=0; m=0
while :; do
  if mkdir "$k" 2>/dev/null; then
    if date +%s > "$k/t" 2>/dev/null; then break; fi
    [ -d "$k" ] || continue
    echo "clawd-fence: cannot write $k/t" >&2; rmdir "$k" 2>/dev/null; exit 4
  fi
  t=; { IFS= read -r t < "$k/t"; } 2>/dev/null
  if [ -z "$t" ]; then
    m=$((m + 1))
    if [ "$m" -gt 20 ]; then rmdir "$k" 2>/dev/null; m=0; continue; fi
  else
    m=0; now=$(date +%s 2>/dev/null)
    if num "$t" && num "$now" && [ $((now - t)) -gt "$stale" ]; then
      t2=; { IFS= read -r t2 < "$k/t"; } 2>/dev/null
      if [ "$t2" = "$t" ]; then unlock; fi
      continue
    fi
  fi
  if sleep 0.1 2>/dev/null; then i=$((i + 1)); else sleep 1; i=$((i + 10)); fi
  if [ "$i" -gt "$spins" ]; then echo "clawd-fence busy"; exit 0; fi
done
trap unlock EXIT
trap 'exit 1' HUP INT TERM PIPE
s=none
if [ -e "$f" ] || [ -L "$f" ]; then
  line=; { IFS= read -r line < "$f"; } 2>/dev/null
  set -f; set -- $line; set +f
  if [ $# -eq 3 ] && num "$1" && num "$2" && hex "$3" && [ ${#3} -le 2048 ]; then
    se=$1; sl=$2; sg=$3; s="$1:$2:$3"
  else
    s=garbage
  fi
fi
beats() {
  [ "$se" -gt "$e" ] && return 0
  [ "$se" -lt "$e" ] && return 1
  [ "$sl" -lt "$l" ] && return 0
  [ "$sl" -gt "$l" ] && return 1
  [ "$(expr "x$sg" \< "x$g")" = 1 ]
}
if [ "$s" != none ] && [ "$s" != garbage ] && beats; then
  echo "clawd-fence stale $s"; exit 0
fi
if [ "$s" != "$e:$l:$g" ]; then
  if [ -d "$f" ]; then echo "clawd-fence: $f is a directory" >&2; exit 5; fi
  printf '%s %s %s\n' "$e" "$l" "$g" > "$f.$$" && mv -f "$f.$$" "$f" || exit 5
fi
for o in "$d"/reinstall-*; do
  n=${o##*/reinstall-}
  if [ -d "$o" ] && num "$n" && [ "$n" -lt "$e" ]; then rm -rf "$o"; fi
done
if [ "$r" = 1 ]; then
  mk="$d/reinstall-$e"
  if mkdir "$mk" 2>/dev/null; then
    printf '%s\n' "$g" > "$mk/owner" || exit 6
  elif [ -d "$mk" ]; then
    o=; { IFS= read -r o < "$mk/owner"; } 2>/dev/null
    if [ "$o" != "$g" ]; then
      hex "$o" || o=unknown
      echo "clawd-fence already $s $o"; exit 0
    fi
  else
    echo "clawd-fence: cannot create $mk" >&2; exit 6
  fi
fi
echo "clawd-fence accepted $s"
"""


def claim_script(directory: str, token: FenceToken, *, reinstall: bool, seconds: float) -> str:
    """The shell script for one claim; every value in it is quoted or plain digits/hex."""
    spins = max(5, min(MAX_SPINS, int(seconds / 2 / SPIN_SECONDS)))
    head = (
        f"d={_shell_path(directory)}; e={token.epoch}; l={token.lead_number}; "
        f"g={shlex.quote(token.gateway_hex())}; r={1 if reinstall else 0}; "
        f"spins={spins}; stale={LOCK_STALE_SECONDS}"
    )
    return head + _SCRIPT


def _gateway(hex_text: str) -> str | None:
    try:
        raw = bytes.fromhex(hex_text)
    except ValueError:
        return None
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def _token(word: str) -> FenceToken | None:
    match = _STORED.fullmatch(word)
    gateway = None if match is None else _gateway(match[3])
    if match is None or gateway is None:
        return None
    try:
        return FenceToken(int(match[1]), int(match[2]), gateway)
    except ValueError:
        return None


def parse_answer(stdout: str) -> FenceResult:
    """The script's answer: its last line; FenceError for anything else."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    words = lines[-1].split(" ") if lines else []
    if len(words) < 2 or words[0] != "clawd-fence":
        shown = (lines[-1] if lines else "nothing")[:80]
        raise FenceError(f"unexpected answer from the fence script: {shown!r}")
    kind, rest = words[1], words[2:]
    if kind == "busy" and not rest:
        raise FenceError("the fence on the peer stayed locked; try again later")
    try:
        fence_kind = FenceKind(kind)
    except ValueError:
        raise FenceError(f"unexpected answer from the fence script: {kind[:40]!r}") from None
    want = 2 if fence_kind is FenceKind.ALREADY else 1
    if len(rest) != want:
        raise FenceError(f"malformed {kind!r} answer from the fence script")
    stored = _token(rest[0])
    if stored is None and rest[0] not in ("none", "garbage"):
        raise FenceError(f"malformed stored token in the fence script's {kind!r} answer")
    if fence_kind is FenceKind.STALE and stored is None:
        raise FenceError("the fence script refused us without naming a stored token")
    owner = None
    if fence_kind is FenceKind.ALREADY and _HEX.fullmatch(rest[1]):
        owner = _gateway(rest[1])
    return FenceResult(fence_kind, stored, rest[0] == "garbage", owner)


async def claim(
    host: RemoteHost, directory: str, token: FenceToken, *, reinstall: bool, seconds: float
) -> FenceResult:
    """Claim the peer behind `host` for `token` (one command on the peer).

    ACCEPTED: go on. ALREADY (only with `reinstall`): another claimant of this epoch owns
    the peer's reinstall. STALE: the peer holds a token that outranks ours. Raises
    FenceError when the claim could not be made at all.
    """
    script = claim_script(directory, token, reinstall=reinstall, seconds=seconds)
    done = await host.run(script, seconds)
    stderr = " ".join(done.stderr_tail.split())
    if done.exit_status is None:
        raise FenceError(f"fence script: {stderr}".strip())
    if not done.ok:
        raise FenceError(f"fence script failed (exit {done.exit_status}): {stderr}".strip())
    result = parse_answer(done.stdout_tail)
    if result.garbage:
        log.warning("fence_token_garbage", gateway=host.peer.gateway_id, directory=directory)
    return result
