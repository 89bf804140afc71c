"""SWIM-style indirect probes ("ping-req"): ask verified peers whether they reach a peer.

Before the daemon declares a peer offline it asks up to k other online, verified peers to
reach that peer's SSH server for it. Nothing runs on a helper: over the SSH connection the
pinger already holds to it, clawd opens a ``direct-tcpip`` channel (what ``ssh -W`` uses)
from the helper to the target's SSH port and reads the target's SSH banner, so no ``clawd``
is needed on the helper's PATH. OpenSSH allows this by default (``AllowTcpForwarding yes``);
a helper whose sshd forbids it is logged once (``probe_forwarding_refused``) and has no vote.

A helper that cannot probe (no connection, connection lost, forwarding forbidden) is an
error, never a vote. Only a majority of the helpers asked overturns an ``offline`` verdict
(:func:`clawd.core.observations.majority`): one lying helper cannot hide an outage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import asyncssh
import structlog

from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import utcnow
from clawd.core.observations import ProbeRequest, ProbeResult, majority
from clawd.core.text import replace_unprintable
from clawd.sources.probe import NoBanner, format_target, read_banner

log = structlog.get_logger("clawd.sources.probe")

MAX_ERROR_CHARS = 120

ConnectionFor = Callable[[str], asyncssh.SSHClientConnection | None]


class ProbeError(ClawdError):
    """A helper could not probe; the message is one short line."""


class ForwardingRefused(ProbeError):
    """The helper's sshd forbids TCP forwarding (AllowTcpForwarding no, PermitOpen...)."""


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What one round of indirect probes found about `target`."""

    target: str  # gateway id of the probed peer
    asked: tuple[str, ...]  # gateway ids of the helpers asked
    reachable_by: tuple[str, ...]  # helpers that read the target's SSH banner
    unreachable_by: tuple[str, ...]  # helpers that probed and did not reach it
    errors: Mapping[str, str]  # helper -> why it could not probe

    @property
    def reachable(self) -> bool:
        """More than half of the helpers asked reached the target."""
        return majority(len(self.reachable_by), len(self.asked))

    @property
    def confirmed_down(self) -> bool:
        """At least one helper probed, and not a majority reached the target."""
        return bool(self.unreachable_by) and not self.reachable


def _one_line(text: str) -> str:
    """Whitespace collapsed, control characters (a peer's words) as "?"; a long one keeps its
    head and tail."""
    flat = replace_unprintable(" ".join(text.split()))
    if len(flat) <= MAX_ERROR_CHARS:
        return flat
    head = (MAX_ERROR_CHARS - 3) // 2
    return f"{flat[:head]}...{flat[len(flat) - (MAX_ERROR_CHARS - 3 - head) :]}"


async def probe_via(
    conn: asyncssh.SSHClientConnection,
    host: str,
    port: int,
    timeout: float,  # noqa: ASYNC109 - one limit for channel open and banner together
) -> bool:
    """Through the helper behind `conn`, reach host:port and read its SSH banner; True when
    a banner came within `timeout`, False when the helper could not reach it.

    Raises ForwardingRefused when the helper forbids forwarding, ProbeError when it could
    not probe (connection lost, channel refused for another reason). The connection is
    borrowed: only the channel opened here is closed.
    """
    writer: asyncssh.SSHWriter[bytes] | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await conn.open_connection(host, port, encoding=None)
            await read_banner(reader)
            return True
    except TimeoutError:
        if conn.is_closed():
            raise ProbeError("connection lost") from None
        return False  # no connect answer (OpenSSH waits for the kernel), or a silent server
    except NoBanner:
        return False  # something listens there, but not an SSH server
    except asyncssh.ChannelOpenError as exc:
        if conn.is_closed():
            raise ProbeError("connection lost") from None
        if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            why = "sshd's AllowTcpForwarding or PermitOpen"
            raise ForwardingRefused(
                _one_line(f"helper forbids TCP forwarding ({why}): {exc.reason}")
            ) from None
        if exc.code == asyncssh.OPEN_CONNECT_FAILED:
            return False  # the helper's connect failed: refused, no route to host
        raise ProbeError(_one_line(f"channel refused: {exc.reason}")) from None
    except asyncssh.ConnectionLost:
        raise ProbeError("connection lost") from None
    except asyncssh.DisconnectError as exc:
        raise ProbeError(_one_line(f"disconnected: {exc.reason}")) from None
    except (asyncssh.Error, OSError) as exc:
        raise ProbeError(_one_line(f"{type(exc).__name__}: {exc}")) from None
    finally:
        if writer is not None:
            writer.close()  # the target owes us nothing more


class IndirectProber:
    """Asks up to k connected helpers, at random, to probe a peer; one round per peer at once.

    The helpers are the ones the reconciler names (online, verified peers); this class
    only picks among those it holds a connection to.

    As a component it owns every round and every request it started: stop() cancels them
    and run() returns once they ended (a verdict would come too late to matter).
    """

    name = "probes"

    def __init__(
        self,
        connection: ConnectionFor,
        *,
        timeout: float = 3.0,
        k: int = 3,
        rng: random.Random | None = None,
        on_verdict: Callable[[ProbeResult], None] | None = None,
    ) -> None:
        self._connection = connection
        self._rng = rng or random.Random()  # noqa: S311 - picking helpers, not crypto
        self.on_verdict = on_verdict
        self.timeout, self.k = timeout, k
        self.configure(timeout=timeout, k=k)
        # Helpers whose sshd forbids forwarding, logged once each (until one probes again).
        self._refusing: set[str] = set()
        self._running: dict[str, asyncio.Task[ProbeVerdict]] = {}
        self._asks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._stopped = asyncio.Event()

    # -- component ----------------------------------------------------------

    async def run(self, ready: asyncio.Event) -> None:
        """Take requests (ask) until stop(); then cancel what is under way and wait for it."""
        self._accepting = not self._stopped.is_set()
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            self._accepting = False
            await self.close()

    def stop(self) -> None:
        self._accepting = False
        self._stopped.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        if changed & {"ping", "ssh", "detection"}:
            d = settings.detection
            self.configure(timeout=d.probe_timeout_seconds, k=d.indirect_probes)

    def ask(self, request: ProbeRequest) -> None:
        """Ask other peers to probe a suspect (the reconciler asked); the verdict goes to
        `on_verdict` as an observation. Ignored unless running."""
        if not self._accepting:
            return
        task = asyncio.create_task(self._ask(request), name=f"probe-{request.target}")
        self._asks.add(task)
        task.add_done_callback(self._asks.discard)

    async def _ask(self, request: ProbeRequest) -> None:
        try:
            verdict = await self.probe(request.target, request.host, request.port, request.helpers)
            result = ProbeResult(
                request.target,
                utcnow(),
                verdict.asked,
                verdict.reachable_by,
                verdict.unreachable_by,
            )
        except Exception:  # a probing bug must not stop the daemon: no verdict
            log.exception("indirect_probe_crashed", target=request.target)
            result = ProbeResult(request.target, utcnow(), (), (), ())
        if self.on_verdict is not None:
            self.on_verdict(result)

    # -- probing ------------------------------------------------------------

    def configure(self, *, timeout: float, k: int) -> None:
        """New settings (live reload); rounds under way finish with the old ones."""
        if not timeout > 0:
            raise ValueError("probe timeout must be more than 0")
        if k < 0:
            raise ValueError("k must be 0 (no indirect probes) or more")
        self.timeout, self.k = timeout, k

    async def probe(
        self, target_gid: str, host: str, port: int, helpers: Sequence[str]
    ) -> ProbeVerdict:
        """Ask up to k of `helpers` (those with an open connection) to probe host:port.

        Never raises for a helper's failure (see ProbeVerdict.errors). A call while a round
        for the same target runs waits for that round's verdict instead of starting another.
        """
        task = self._running.get(target_gid)
        if task is None:
            task = asyncio.create_task(
                self._round(target_gid, host, port, tuple(helpers)),
                name=f"indirect-probe-{target_gid}",
            )
            self._running[target_gid] = task
            task.add_done_callback(lambda done: self._forget(target_gid, done))
        # shield: one caller cancelled (say a reload) must not cancel the round for the others
        return await asyncio.shield(task)

    def _forget(self, target_gid: str, task: asyncio.Task[ProbeVerdict]) -> None:
        if self._running.get(target_gid) is task:
            del self._running[target_gid]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" noise when no caller is left

    async def close(self) -> None:
        """Cancel the requests and rounds under way (daemon stop) and wait for them to end."""
        tasks: list[asyncio.Task[object]] = [*self._asks, *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _pick(self, target_gid: str, helpers: Sequence[str]) -> list[str]:
        connected = [
            gid
            for gid in dict.fromkeys(helpers)
            if gid != target_gid and self._connection(gid) is not None
        ]
        return self._rng.sample(connected, min(self.k, len(connected)))

    async def _round(
        self, target_gid: str, host: str, port: int, helpers: Sequence[str]
    ) -> ProbeVerdict:
        timeout = self.timeout
        chosen = self._pick(target_gid, helpers)
        answers: dict[str, bool] = {}
        errors: dict[str, str] = {}
        start = time.monotonic()

        async def ask(gid: str) -> None:
            conn = self._connection(gid)
            if conn is None:  # gone since it was picked
                errors[gid] = "no connection"
                return
            try:
                answers[gid] = await probe_via(conn, host, port, timeout)
            except ForwardingRefused as exc:
                errors[gid] = str(exc)
                if gid not in self._refusing:
                    self._refusing.add(gid)
                    log.warning("probe_forwarding_refused", helper=gid, error=str(exc))
                return
            except ProbeError as exc:
                errors[gid] = str(exc)
            except Exception as exc:  # a helper's failure must never sink the round
                errors[gid] = _one_line(f"unexpected {type(exc).__name__}: {exc}")
            else:
                self._refusing.discard(gid)  # forwards again (its sshd was reconfigured)

        async with asyncio.TaskGroup() as group:
            for gid in chosen:
                group.create_task(ask(gid))
        verdict = ProbeVerdict(
            target=target_gid,
            asked=tuple(sorted(chosen)),
            reachable_by=tuple(sorted(g for g, ok in answers.items() if ok)),
            unreachable_by=tuple(sorted(g for g, ok in answers.items() if not ok)),
            errors=MappingProxyType(dict(sorted(errors.items()))),
        )
        for gid, error in verdict.errors.items():
            if gid in self._refusing:
                continue  # said once, as probe_forwarding_refused
            log.warning("indirect_probe_helper_failed", target=target_gid, helper=gid, error=error)
        log.info(
            "indirect_probe",
            target=target_gid,
            address=format_target(host, port),
            asked=len(verdict.asked),
            reachable_by=len(verdict.reachable_by),
            unreachable_by=len(verdict.unreachable_by),
            errors=len(verdict.errors),
            reachable=verdict.reachable,  # by a majority of those asked
            ms=round((time.monotonic() - start) * 1000, 1),
        )
        return verdict
