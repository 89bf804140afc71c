"""The one storage interface the daemon talks to, and its JSON + PostgreSQL fan-out.

The JSON files are always written (the seed's local fallback); with
`backend: postgres` every write is also handed to the PostgreSQL sink, which
never makes the caller wait for the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from clawd.config.settings import Settings
from clawd.core.errors import StoreError
from clawd.core.model import FleetSnapshot, Incident, Instance, PeerState, Ping, SkillAudit
from clawd.keep.store.fleet_record import observed_by
from clawd.keep.store.history_sync import HistorySync
from clawd.keep.store.json_store import JsonStore, LoadResult
from clawd.keep.store.ops import PingBatch, WriteOp
from clawd.keep.store.pg_sink import PgSink

log = structlog.get_logger("clawd.keep.store")


class Repository(Protocol):
    """What sources, the reconciler's effects and the CLI may do with storage."""

    def snapshot(self) -> FleetSnapshot: ...

    async def upsert_instance(self, instance: Instance) -> None: ...

    async def save_peer_state(self, state: PeerState, *, shared: bool = True) -> None: ...

    async def record_pings(self, pings: Sequence[Ping]) -> None: ...

    async def record_incident(self, incident: Incident) -> None: ...

    async def record_skill_audit(self, audit: SkillAudit) -> None: ...

    async def set_leader(self, gateway_id: str | None) -> None: ...

    async def forget_peer(self, gateway_id: str) -> None: ...

    async def flush(self) -> None: ...


SHUTDOWN_FLUSH_SECONDS = 2.5


@dataclass(frozen=True, slots=True)
class Rebuilders:
    """What a reload rebuilds from the new Settings: without them a repository keeps the
    sink and instance it was built with."""

    sink_for: Callable[[Settings], PgSink]
    instance_for: Callable[[Settings], Instance]


class FleetRepository:
    """JSON always; PostgreSQL too when a sink is attached.

    As a component it owns that sink: it runs it, switches it on a reload that changes the
    backend, and at stop (after the keeper drained) flushes, stops and closes it.
    """

    name = "store"

    def __init__(
        self,
        json_store: JsonStore,
        me: Instance,
        sink: PgSink | None = None,
        *,
        rebuild: Rebuilders | None = None,
    ) -> None:
        self.json = json_store
        self.me = me
        self.sink = sink
        self._rebuild = rebuild
        self._backend = "json" if sink is None else "postgres"
        self._snapshot = FleetSnapshot()
        self._stopped = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._sink_task: asyncio.Task[None] | None = None
        self._json_failing: set[str] = set()  # kinds of JSON write failing right now
        self._on_sink_change: Callable[[], None] | None = None

    def watch_sink(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` whenever the PostgreSQL sink's state changes (this sink and
        any attached later)."""
        self._on_sink_change = on_change
        if self.sink is not None:
            self.sink.on_change = on_change

    def sink_state(self) -> str:
        """The PostgreSQL sink's own description, or "off" with JSON only."""
        return "off" if self.sink is None else self.sink.describe()

    async def open(self) -> LoadResult:
        """Load the JSON store, register this instance, and queue the JSON state for
        PostgreSQL so that switching to it loses nothing."""
        loaded = await self.json.load()
        self._snapshot = loaded.snapshot
        previous = self._snapshot.instances.get(self.me.gateway_id)
        if previous is not None:
            self.me = dataclasses.replace(self.me, registered_at=previous.registered_at)
        await self.json.write_state(self.me)
        if self.sink is not None:
            await self.sink.open()
            await self._sync_json_to_sink(self.sink)
        await self.upsert_instance(self.me)
        return loaded

    async def _sync_json_to_sink(self, sink: PgSink) -> None:
        """Everything the JSON store holds goes to PostgreSQL too (idempotently), so a
        switch from `json` to `postgres` loses nothing recorded meanwhile."""
        history = HistorySync(self.json)
        ops: list[WriteOp] = [*self._snapshot.instances.values(), *self._snapshot.peers.values()]
        records = await asyncio.to_thread(history.pending_ops)
        me = self.me.gateway_id
        # What this machine saw while on JSON: its reports, like its live ones.
        records = [
            observed_by(r, me, history=True) if isinstance(r, Incident) else r for r in records
        ]
        await sink.preload(ops + records)
        await asyncio.to_thread(history.commit)
        if records:
            log.info("json_history_queued_for_postgres", records=len(records))

    async def attach_sink(self, sink: PgSink) -> None:
        """Start writing to PostgreSQL too (backend switched to postgres at run time)."""
        self.sink = sink
        sink.on_change = self._on_sink_change
        await sink.open()
        await self._sync_json_to_sink(sink)

    def detach_sink(self) -> PgSink | None:
        """Stop handing writes to PostgreSQL; the caller drains and closes the sink."""
        sink, self.sink = self.sink, None
        return sink

    # -- component --------------------------------------------------------

    async def run(self, ready: asyncio.Event) -> None:
        """Deliver to PostgreSQL (when a sink is attached) until stop(); then flush what
        is queued (bounded: the rest stays in the spool), stop and close the sink."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self.sink is not None:
                    self._sink_task = tg.create_task(self.sink.run(ready), name="postgres")
                else:
                    ready.set()
                await self._stopped.wait()
                await self._flush_at_stop()
                await self._stop_sink()
        except BaseExceptionGroup as group:
            # What the sink died of, as before it ran inside this task group.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self._tg = None

    def stop(self) -> None:
        self._stopped.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        """This instance's new details go to state.json and the fleet; a changed backend
        (or new PostgreSQL settings) swaps the sink."""
        if "instance" in changed and self._rebuild is not None:
            # Registered once, when first seen: a reload does not register it again.
            me = self._rebuild.instance_for(settings)
            self.me = dataclasses.replace(me, registered_at=self.me.registered_at)
            await self._json("state", self.json.write_state(self.me))
            await self.upsert_instance(self.me)
        if changed & {"backend", "postgres"} and (
            settings.backend != self._backend or settings.backend == "postgres"
        ):
            await self._switch_backend(settings)

    async def _switch_backend(self, settings: Settings) -> None:
        await self._stop_sink()
        self._backend = settings.backend
        if settings.backend == "postgres":
            if self._rebuild is None or self._tg is None:
                raise RuntimeError("this repository cannot start a PostgreSQL sink")
            sink = self._rebuild.sink_for(settings)
            await self.attach_sink(sink)
            ready = asyncio.Event()
            self._sink_task = self._tg.create_task(sink.run(ready), name="postgres")
            await ready.wait()
        log.info("backend_switched", backend=settings.backend, postgres=self.sink_state())

    async def _flush_at_stop(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), SHUTDOWN_FLUSH_SECONDS)
        except TimeoutError:
            log.error(
                "shutdown_flush_timeout",
                seconds=SHUTDOWN_FLUSH_SECONDS,
                note="pending writes stay in the spool and are sent at next start",
            )

    async def _stop_sink(self) -> None:
        sink = self.detach_sink()
        if sink is None:
            return
        sink.stop()
        if self._sink_task is not None:
            await self._sink_task
            self._sink_task = None
        await sink.close()

    async def close(self) -> None:
        if self.sink is not None:
            await self.sink.close()

    # -- Repository -------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        return FleetSnapshot(
            instances=dict(self._snapshot.instances),
            peers=dict(self._snapshot.peers),
            leader=self._snapshot.leader,
        )

    async def upsert_instance(self, instance: Instance) -> None:
        self._snapshot.instances[instance.gateway_id] = instance
        if instance.gateway_id != self.me.gateway_id:
            state = self._snapshot.peers.setdefault(
                instance.gateway_id, PeerState(gateway_id=instance.gateway_id)
            )
            await self._json("peer", self.json.write_peer(instance, state))
        await self._write_fleet()
        if self.sink is not None:
            await self.sink.submit(instance)

    async def save_peer_state(self, state: PeerState, *, shared: bool = True) -> None:
        """`shared`: to the shared database too (not for a peer whose state this machine
        only follows from the fleet's verdict: its observers write it there)."""
        self._snapshot.peers[state.gateway_id] = state
        instance = self._snapshot.instances.get(state.gateway_id)
        if instance is None:
            instance = Instance(gateway_id=state.gateway_id, name=state.gateway_id)
            self._snapshot.instances[state.gateway_id] = instance
        await self._json("peer", self.json.write_peer(instance, state))
        if self.sink is not None and shared:
            await self.sink.submit(state)

    async def record_pings(self, pings: Sequence[Ping]) -> None:
        # The JSON backend keeps current state only (the seed's contract);
        # ping history lives in PostgreSQL.
        if self.sink is not None and pings:
            await self.sink.submit(PingBatch(tuple(pings)))

    async def record_incident(self, incident: Incident) -> None:
        await self._json("incident", self.json.append_incident(incident))
        if self.sink is not None:
            # The shared database keeps one row per real event: say who saw this one.
            await self.sink.submit(observed_by(incident, self.me.gateway_id))

    async def record_skill_audit(self, audit: SkillAudit) -> None:
        await self._json("skill_audit", self.json.append_skill_audit(audit))
        if self.sink is not None:
            await self.sink.submit(audit)

    async def set_leader(self, gateway_id: str | None) -> None:
        if gateway_id != self._snapshot.leader:
            self._snapshot.leader = gateway_id
            await self._write_fleet()

    async def forget_peer(self, gateway_id: str) -> None:
        """`clawd peer forget`: its peer file and fleet.json entry go; PostgreSQL keeps its
        rows (history), so nothing is sent to the sink."""
        self._snapshot.instances.pop(gateway_id, None)
        self._snapshot.peers.pop(gateway_id, None)
        await self._json("peer", self.json.remove_peer(gateway_id))
        await self._write_fleet()

    async def flush(self) -> None:
        if self.sink is not None:
            await self.sink.flush()

    async def _write_fleet(self) -> None:
        instances = sorted(self._snapshot.instances.values(), key=lambda i: i.gateway_id)
        await self._json("fleet", self.json.write_fleet(instances, self._snapshot.leader))

    async def _json(self, kind: str, write: Awaitable[object]) -> None:
        """A failed JSON write (disk full, read-only file system) is one error line per
        kind, not the end of monitoring; the next write of that kind tries again."""
        try:
            await write
        except StoreError as exc:
            if kind not in self._json_failing:
                self._json_failing.add(kind)
                log.error(
                    "json_write_failed",
                    kind=kind,
                    error=str(exc),
                    action="monitoring goes on; later writes retry",
                )
            return
        if kind in self._json_failing:
            self._json_failing.discard(kind)
            log.info("json_write_recovered", kind=kind)
