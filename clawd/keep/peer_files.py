"""Peer-file writes, coalesced: a change of what matters is written at once, a mere
"still there" at most every `interval` seconds per peer, so 1,000 peers do not mean
100 file writes a second."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from clawd.core.model import PeerState
from clawd.keep.store.repository import Repository


def observed_facts(state: PeerState) -> tuple[object, ...]:
    """What leader work (reinstall, config push) acts on."""
    return (
        state.status,
        state.ssh_connectivity,
        state.claw_clan_installed,
        state.mdns_broadcasting,
    )


def _significant(state: PeerState) -> tuple[object, ...]:
    """What is written to the peer file at once: the observed facts and the miss count."""
    return (*observed_facts(state), state.missed_pings)


@dataclass(slots=True)
class _Written:
    state: PeerState
    at: float  # monotonic


class PeerFileWriter:
    """Writes peer states to the repository, holding back the ones that only say "still
    there" until `interval` seconds after that peer's last write (or a flush)."""

    def __init__(
        self, repo: Repository, interval: float, shared: Callable[[str], bool] = lambda _: True
    ) -> None:
        self.repo = repo
        self.interval = interval
        # Whether a peer's state goes to the shared record too: with k observers per
        # machine, only what this machine probes (the rest is the fleet's verdict there,
        # which it only follows; its peer files still show it).
        self._shared = shared
        self._written: dict[str, _Written] = {}
        self._dirty: dict[str, PeerState] = {}

    async def offer(self, state: PeerState) -> None:
        """Write `state` now if it matters or is due, else keep it for a later flush."""
        last = self._written.get(state.gateway_id)
        if (
            last is None
            or _significant(last.state) != _significant(state)
            or time.monotonic() - last.at >= self.interval
        ):
            await self._write(state)
        else:
            self._dirty[state.gateway_id] = state

    def forget(self, gateway_id: str) -> None:
        """A forgotten peer: a held-back state must not write its file back."""
        self._dirty.pop(gateway_id, None)
        self._written.pop(gateway_id, None)

    async def flush(self, *, force: bool) -> None:
        """Write the held-back states that are due (all of them with `force`)."""
        now = time.monotonic()
        for gid, state in list(self._dirty.items()):
            last = self._written.get(gid)
            if force or last is None or now - last.at >= self.interval:
                await self._write(state)

    async def _write(self, state: PeerState) -> None:
        self._dirty.pop(state.gateway_id, None)
        await self.repo.save_peer_state(state, shared=self._shared(state.gateway_id))
        self._written[state.gateway_id] = _Written(state, time.monotonic())
