"""SWIM-style indirect probes ("ping-req"): ask other peers whether they reach a peer.

Before the daemon declares a peer offline it asks up to k other online peers, over the SSH
connections it already holds to them, to run ``clawd probe HOST:PORT`` (see
``clawd.sources.probe``). If any of them reaches the peer's SSH server, the failure is only on
our side of the network; if they ran the probe and none reached it, the peer is confirmed down.
A helper that cannot run the probe (no connection, command missing, timeout, bad output) is an
error, never a vote.
"""

from __future__ import annotations

import asyncio
import json
import random
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import asyncssh
import structlog

from clawd.config.settings import Settings
from clawd.core.errors import ClawdError
from clawd.core.model import utcnow
from clawd.core.observations import ProbeRequest, ProbeResult
from clawd.core.text import replace_unprintable
from clawd.sources.probe import EXIT_REACHABLE, EXIT_UNREACHABLE, format_target

log = structlog.get_logger("clawd.sources.probe")

# Beyond the probe's own timeout: opening the channel, the helper's login shell and Python
# start-up (about 0.4 s on a small machine; more under load).
EXEC_MARGIN_SECONDS = 5.0
MAX_ERROR_CHARS = 120

ConnectionFor = Callable[[str], asyncssh.SSHClientConnection | None]


class ProbeError(ClawdError):
    """A helper could not run the probe; the message is one short line."""


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What one round of indirect probes found about `target`."""

    target: str  # gateway id of the probed peer
    asked: tuple[str, ...]  # gateway ids of the helpers asked
    reachable_by: tuple[str, ...]  # helpers whose probe reached the target
    unreachable_by: tuple[str, ...]  # helpers whose probe ran and failed to reach it
    errors: Mapping[str, str]  # helper -> why its probe could not run

    @property
    def reachable(self) -> bool:
        """Some helper reached the target."""
        return bool(self.reachable_by)

    @property
    def confirmed_down(self) -> bool:
        """At least one helper ran the probe, and none reached the target."""
        return bool(self.unreachable_by) and not self.reachable_by


def probe_command_line(command: str, host: str, port: int, timeout: float) -> str:
    """The shell command a helper runs: `command` is configuration, the target is quoted."""
    return f"{command} {shlex.quote(format_target(host, port))} --timeout {timeout:g} --json"


def _one_line(text: str) -> str:
    """Whitespace collapsed, control characters (a peer's words) as "?"; a long one keeps its
    head and tail (a shell's "…: not found" is at the end)."""
    flat = replace_unprintable(" ".join(text.split()))
    if len(flat) <= MAX_ERROR_CHARS:
        return flat
    head = (MAX_ERROR_CHARS - 3) // 2
    return f"{flat[:head]}...{flat[len(flat) - (MAX_ERROR_CHARS - 3 - head) :]}"


def _parse_answer(exit_status: int, stdout: str) -> bool:
    """The probe's JSON line (the last one: a login shell may print before it)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    reachable = answer.get("reachable") if isinstance(answer, dict) else None
    if not isinstance(reachable, bool):
        raise ProbeError("probe output is not clawd probe's JSON")
    if reachable != (exit_status == EXIT_REACHABLE):
        raise ProbeError(f"probe output says reachable={reachable} but exit status {exit_status}")
    return reachable


async def probe_via(
    conn: asyncssh.SSHClientConnection,
    command: str,
    host: str,
    port: int,
    timeout: float,  # noqa: ASYNC109 - the helper's probe timeout, passed on to it
    *,
    margin: float = EXEC_MARGIN_SECONDS,
) -> bool:
    """Ask the helper behind `conn` whether it reaches host:port; True when it does.

    Raises ProbeError when the helper could not run the probe: exit status other than 0/1,
    unparseable output, no answer within `timeout` + `margin`, channel refused, connection
    lost. The connection is borrowed: only the session channel opened here is closed.
    """
    line = probe_command_line(command, host, port, timeout)
    limit = timeout + margin
    process: asyncssh.SSHClientProcess[str] | None = None
    try:
        async with asyncio.timeout(limit):
            # conn.run() without its leak: on timeout the channel is closed, not left open.
            process = await conn.create_process(
                line, stdin=asyncssh.DEVNULL, encoding="utf-8", errors="replace"
            )
            done = await process.wait()
    except TimeoutError:
        raise ProbeError(f"no answer within {limit:g}s") from None
    except asyncssh.ChannelOpenError as exc:
        raise ProbeError(_one_line(f"channel refused: {exc.reason}")) from None
    except asyncssh.ConnectionLost:
        raise ProbeError("connection lost") from None
    except asyncssh.DisconnectError as exc:
        raise ProbeError(_one_line(f"disconnected: {exc.reason}")) from None
    except (asyncssh.Error, OSError) as exc:
        raise ProbeError(_one_line(f"{type(exc).__name__}: {exc}")) from None
    finally:
        if process is not None:
            process.close()
    status = done.exit_status
    if status not in (EXIT_REACHABLE, EXIT_UNREACHABLE):
        if done.exit_signal:
            raise ProbeError(_one_line(f"probe killed by signal {done.exit_signal[0]}"))
        if status is None or status < 0:  # the channel closed without an exit status
            raise ProbeError("connection lost" if conn.is_closed() else "probe gave no exit status")
        stderr = done.stderr if isinstance(done.stderr, str) else ""
        detail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        why = f": {detail[0]}" if detail else ""
        raise ProbeError(_one_line(f"probe exited with status {status}{why}"))
    stdout = done.stdout if isinstance(done.stdout, str) else ""
    return _parse_answer(status, stdout)


class IndirectProber:
    """Asks up to k connected helpers, at random, to probe a peer; one round per peer at once.

    As a component it owns every round and every request it started: stop() cancels them
    and run() returns once they ended (a verdict would come too late to matter).
    """

    name = "probes"

    def __init__(
        self,
        connection: ConnectionFor,
        *,
        command: str = "clawd probe",
        timeout: float = 3.0,
        k: int = 3,
        rng: random.Random | None = None,
        margin: float = EXEC_MARGIN_SECONDS,
        on_verdict: Callable[[ProbeResult], None] | None = None,
    ) -> None:
        self._connection = connection
        self._rng = rng or random.Random()  # noqa: S311 - picking helpers, not crypto
        self._margin = margin
        self.on_verdict = on_verdict
        self.command, self.timeout, self.k = command, timeout, k
        self.configure(command=command, timeout=timeout, k=k)
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
            self.configure(
                command=d.probe_command, timeout=d.probe_timeout_seconds, k=d.indirect_probes
            )

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

    def configure(self, *, command: str, timeout: float, k: int) -> None:
        """New settings (live reload); rounds under way finish with the old ones."""
        if not command.strip():
            raise ValueError("probe command is empty")
        if not timeout > 0:
            raise ValueError("probe timeout must be more than 0")
        if k < 0:
            raise ValueError("k must be 0 (no indirect probes) or more")
        self.command, self.timeout, self.k = command, timeout, k

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
        command, timeout, margin = self.command, self.timeout, self._margin
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
                answers[gid] = await probe_via(conn, command, host, port, timeout, margin=margin)
            except ProbeError as exc:
                errors[gid] = str(exc)
            except Exception as exc:  # a helper's failure must never sink the round
                errors[gid] = _one_line(f"unexpected {type(exc).__name__}: {exc}")

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
            log.warning("indirect_probe_helper_failed", target=target_gid, helper=gid, error=error)
        log.info(
            "indirect_probe",
            target=target_gid,
            address=format_target(host, port),
            asked=len(verdict.asked),
            reachable_by=len(verdict.reachable_by),
            unreachable_by=len(verdict.unreachable_by),
            errors=len(verdict.errors),
            ms=round((time.monotonic() - start) * 1000, 1),
        )
        return verdict
