"""The leader lease in PostgreSQL (backend postgres): one leader, one epoch sequence.

Every daemon judges from its own view who should lead (the election's rule: the online,
verified instance with the lowest lead number). The one that should lead tries the leader
advisory lock on a session of its own (never a pool connection: the lock lives exactly as
long as that session). Holding it, it takes a new epoch from the sequence and writes the
lease row in one transaction, renews the row every interval, and NOTIFYs. Every daemon
LISTENs (and reads the row every interval besides) and hands the lease to the keeper as a
`LeaseSeen`: the view reports the lease's leader and epoch, and only the holder acts.

A holder that loses its session (the connection closes, or a round does not finish within
one interval) stops acting at once; one that sees a better-ranked verified instance online
lets go, and that one takes it. PostgreSQL's lock decides: there is no protocol of ours,
and a part of the fleet that cannot reach the database cannot lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

import asyncpg
import structlog

from clawd.config.settings import Settings, lease_on
from clawd.core.lock_ids import LEADER_LOCK_ID, LEASE_SESSIONS, lease_session_name
from clawd.core.model import utcnow
from clawd.core.observations import LeaseSeen, Observation
from clawd.decide.view import FleetView, elect_leader
from clawd.keep.store.pg_errors import TRANSIENT
from clawd.keep.store.session_settings import session_settings

log = structlog.get_logger("clawd.keep.lease")

CHANNEL = "clawd_leader"
CLOSE_TIMEOUT_S = 5.0
MAX_ROUNDS = 8  # per interval, at most
# A peer with no lease session is passed over after this long (its daemon may be starting).
GRACE_INTERVALS = 3
GRACE_MIN_S = 5.0

# And whether its holder stopped renewing it (the fleet is without an acting leader).
_READ = """
SELECT gateway_id, epoch, renewed_at < now() - make_interval(secs => $1) AS silent
FROM fleet_leader WHERE id = 1
"""
_RENEW = "UPDATE fleet_leader SET renewed_at = now() WHERE id = 1 AND gateway_id = $1"
_RETAKE = (
    "UPDATE fleet_leader SET acquired_at = now(), renewed_at = now()"
    " WHERE id = 1 AND gateway_id = $1"
)
_NEXT_EPOCH = "SELECT nextval('fleet_leader_epoch')"
# Past an epoch this instance knows of that the sequence has not reached (a fence's, or one
# from the JSON backend's days): rare, and the one use of UPDATE on the sequence.
_SKIP_TO = "SELECT setval('fleet_leader_epoch', $1::bigint)"
_WRITE = (
    "INSERT INTO fleet_leader (id, gateway_id, epoch, acquired_at, renewed_at)"
    " VALUES (1, $1, $2, now(), now()) ON CONFLICT (id) DO UPDATE SET"
    " gateway_id = excluded.gateway_id, epoch = excluded.epoch,"
    " acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at"
)


# The lock's holder has been silent for this many intervals (it renews every half
# interval, and stops acting when a round does not finish within one).
STALE_HOLDER_INTERVALS = 3
# A holder that went silent -- cut off by a partition, or a machine gone without closing
# its TCP connection -- keeps its session's lock until PostgreSQL's TCP keepalives give up
# on it (two hours by default). It stopped acting long ago: end its session, so that the
# lock is free for the instance that should lead now. Both the lease row and the session
# must be silent (a holder that took the lock a moment ago writes the row at once).
_END_SILENT_HOLDER = """
SELECT l.pid, pg_terminate_backend(l.pid) AS ended
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
JOIN fleet_leader f ON f.id = 1
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()
  AND f.renewed_at < now() - make_interval(secs => $3)
  AND a.state_change < now() - make_interval(secs => $3)
"""

# Who has a lease session open on this database: the instances that could take the lease.
_CANDIDATES = f"SELECT application_name FROM pg_stat_activity WHERE {LEASE_SESSIONS}"  # noqa: S608


def lease_leader(view: FleetView, able: frozenset[str] | None = None) -> str | None:
    """The election's rule among the instances that could take the lease: this one and
    the online verified peers in `able` (None: every peer). A peer that does not run clawd,
    or cannot reach the database, cannot hold the lease: waiting for it would leave the
    fleet leaderless."""
    if able is not None:
        view = dataclasses.replace(view, peers={g: r for g, r in view.peers.items() if g in able})
    return elect_leader(view)


def wants_lead(view: FleetView, able: frozenset[str] | None = None) -> bool:
    """Would this instance elect itself (once the start-up wait is over)?"""
    return view.settle is None and lease_leader(view, able) == view.me.gateway_id


@dataclasses.dataclass(frozen=True)
class LeaseRound:
    """What one lease round saw, for the riders."""

    # The lease sessions (application names): the instances running clawd on this database.
    sessions: frozenset[str]
    held: bool  # this instance holds the lease: the fleet's one leader
    # Nobody renews the lease (none taken yet, or its holder went silent): the fleet has
    # no acting leader, so what only the leader does falls to every instance meanwhile.
    leaderless: bool


class SessionRider(Protocol):
    """Reads more of the fleet's shared state on the lease's session (one session per
    daemon for it, not one more): the fleet's verdicts, and on the leader the outages
    still to decide (keep/verdicts.py)."""

    async def attach(self, conn: asyncpg.Connection, wake: Callable[[], None]) -> None:
        """A new session: listen on it; `wake` asks for a round now."""

    async def ride(self, conn: asyncpg.Connection, seen: LeaseRound) -> None:
        """After each lease round, within its time bound."""


class LeaderLease:
    """Takes, renews and lets go of the lease; reports what it reads to the keeper."""

    name = "lease"

    def __init__(
        self,
        settings: Settings,
        view: Callable[[], FleetView],
        emit: Callable[[Observation], None],
        riders: tuple[SessionRider, ...] = (),
    ) -> None:
        self.settings = settings
        self._riders = riders
        self._view = view
        self._emit = emit
        self._wake = asyncio.Event()
        self._stopping = False
        self._reconnect = False
        self._active = False
        self._conn: asyncpg.Connection | None = None
        self._held = False
        self._down = False  # the last connect failed (logged once until one succeeds)
        self._reported: tuple[str | None, int, bool] | None = None
        self._schema_missing = False
        # Peers that could take the lease (a lease session open, or not missed for long),
        # and since when each has had none (time.monotonic()).
        self._able: frozenset[str] = frozenset()
        self._sessions: frozenset[str] = frozenset()  # the last round's lease sessions
        self._leaderless = False  # the last round found nobody renewing the lease
        self._absent: dict[str, float] = {}

    @property
    def held(self) -> bool:
        return self._held

    @property
    def interval(self) -> float:
        return self.settings.ping.interval_seconds

    def _pace(self) -> float:
        return self.interval / 2 if self._held else self.interval

    def update_view(self, view: FleetView) -> None:
        """A new view: act now if it changes whether we should hold the lease (the leader
        went offline, a better one came up), not at the next interval."""
        if self._active and wants_lead(view, self._able) != self._held:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def reconfigure(self, settings: Settings, changed: frozenset[str]) -> None:
        self.settings = settings
        if changed & {"backend", "postgres", "storage"}:
            self._reconnect = True
            self._wake.set()

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        try:
            while not self._stopping:
                self._wake.clear()
                started = time.monotonic()
                await self._step()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._pace()):
                        await self._wake.wait()
                # Woken early (a new view, a NOTIFY): still at most a few rounds per
                # interval, however fast views come (one per ping batch).
                gap = self.interval / MAX_ROUNDS - (time.monotonic() - started)
                if gap > 0 and not self._stopping:
                    await asyncio.sleep(gap)
        finally:
            await self._close()

    async def _step(self) -> None:
        if self._reconnect:
            self._reconnect = False
            await self._close()
        if not lease_on(self.settings):
            if self._active:  # back to JSON: the view's own election decides again
                self._active = False
                self._reported = None
                self._emit(LeaseSeen(utcnow(), None, 0, held=False, active=False))
            return
        self._active = True
        try:
            conn = self._conn or await self._connect()
            # A holder renews every half interval, each round bounded by half an interval:
            # one whose session hangs stops acting within one interval of its last renewal.
            async with asyncio.timeout(self._pace()):
                await self._round(conn)
        except asyncpg.UndefinedTableError:
            # Read before the repository's migrations ran (they go in the background when
            # the database came late): nothing held yet, the next round reads again.
            if not self._schema_missing:
                self._schema_missing = True
                log.info("lease_schema_missing", table="fleet_leader")
            return
        except (*TRANSIENT, asyncpg.PostgresError) as exc:
            await self._lost(exc)
            return
        await self._ride(conn)

    async def _ride(self, conn: asyncpg.Connection) -> None:
        """The riders' reads, each bounded like a round: theirs to fail, never the lease's
        (a slow or broken rider read must not cost the leader its lock)."""
        for rider in self._riders:
            try:
                async with asyncio.timeout(self._pace()):
                    seen = LeaseRound(self._sessions, self._held, self._leaderless)
                    await rider.ride(conn, seen)
            except asyncpg.UndefinedTableError:
                return  # migrations still running: the next round reads again
            except (*TRANSIENT, asyncpg.PostgresError) as exc:
                rider_name, error = type(rider).__name__, type(exc).__name__
                log.warning("lease_rider_failed", rider=rider_name, error=error)
                return

    async def _connect(self) -> asyncpg.Connection:
        me = self._view().me.gateway_id
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                **self.settings.postgres.connect_kwargs(),
                server_settings=session_settings(lease_session_name(me)),
            )
        except (*TRANSIENT, asyncpg.PostgresError):
            if not self._down:
                self._down = True
                log.warning("lease_connect_failed", target=self.settings.postgres.target())
            raise
        if self._down:
            self._down = False
            log.info("lease_connected", target=self.settings.postgres.target())
        conn.add_termination_listener(self._terminated)
        await conn.add_listener(CHANNEL, self._notified)
        for rider in self._riders:
            await rider.attach(conn, self._wake.set)
        self._conn = conn
        return conn

    async def _round(self, conn: asyncpg.Connection) -> None:
        view = self._view()
        me = view.me.gateway_id
        silent = STALE_HOLDER_INTERVALS * self.interval
        row = await conn.fetchrow(_READ, silent)
        leader, epoch = (str(row["gateway_id"]), int(row["epoch"])) if row else (None, 0)
        self._leaderless = row is None or bool(row["silent"])
        sessions = {str(r["application_name"]) for r in await conn.fetch(_CANDIDATES)}
        self._sessions = frozenset(sessions)
        self._able = self._could_lead(view, sessions)
        want, new = wants_lead(view, self._able), False
        if want and not self._held:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_ID):
                self._held = True
                leader, epoch, new = await self._take(conn, view, leader, epoch)
                log.info("lease_acquired", epoch=epoch, new_epoch=new)
            else:
                await self._end_silent_holder(conn, leader)
        elif self._held and not want:
            await conn.fetchval("SELECT pg_advisory_unlock($1)", LEADER_LOCK_ID)
            self._held = False
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, "released")
            log.info("lease_released", epoch=epoch, leader=lease_leader(view, self._able))
        elif self._held:
            floor = view.lease.floor if view.lease is not None else 0
            if leader != me or floor >= epoch:  # a fence holds an epoch as new as ours
                leader, epoch, new = await self._take(conn, view, leader, epoch)
            else:
                await conn.execute(_RENEW, me)
        self._report(leader, epoch, new)

    async def _end_silent_holder(self, conn: asyncpg.Connection, leader: str | None) -> None:
        """The lock is taken but we should lead: if its holder has gone silent, end its
        session (the next round takes the lock)."""
        silent = STALE_HOLDER_INTERVALS * self.interval
        try:
            rows = await conn.fetch(
                _END_SILENT_HOLDER, LEADER_LOCK_ID >> 32, LEADER_LOCK_ID & 0xFFFFFFFF, silent
            )
        except asyncpg.InsufficientPrivilegeError:
            # Another database role holds it (roles per machine): only it, or a role
            # with pg_signal_backend, may end that session.
            log.warning("lease_holder_not_ended", leader=leader, reason="insufficient privilege")
            return
        for row in rows:
            if row["ended"]:
                log.warning("lease_holder_ended", leader=leader, pid=row["pid"], silent_s=silent)
                self._wake.set()

    def _could_lead(self, view: FleetView, sessions: set[str]) -> frozenset[str]:
        """The peers with a lease session, and those without one for less than the grace
        (a daemon still starting, a session reconnecting): not passed over at once."""
        now, grace = time.monotonic(), max(GRACE_INTERVALS * self.interval, GRACE_MIN_S)
        for gid in list(self._absent):
            if gid not in view.peers:
                del self._absent[gid]
        able = set()
        for gid in view.peers:
            if lease_session_name(gid) in sessions:
                self._absent.pop(gid, None)
                able.add(gid)
            elif now - self._absent.setdefault(gid, now) < grace:
                able.add(gid)
        return frozenset(able)

    async def _take(
        self, conn: asyncpg.Connection, view: FleetView, leader: str | None, epoch: int
    ) -> tuple[str, int, bool]:
        """Write the lease as ours (holding the lock); (leader, epoch, a new epoch?)."""
        me = view.me.gateway_id
        floor = view.lease.floor if view.lease is not None else 0
        async with conn.transaction():
            if leader == me and epoch > floor and epoch >= view.epoch:
                # Ours already (we restarted, or got our session back) and no one led
                # since: the same epoch, nothing new to record.
                await conn.execute(_RETAKE, me)
                new = False
            else:
                epoch = int(await conn.fetchval(_NEXT_EPOCH))
                if epoch <= (known := max(floor, view.epoch)):
                    epoch = int(await conn.fetchval(_SKIP_TO, known + 1))
                await conn.execute(_WRITE, me, epoch)
                new = True
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(epoch))
        return me, epoch, new

    def _report(self, leader: str | None, epoch: int, new: bool = False) -> None:
        key = (leader, epoch, self._held)
        if key == self._reported and not new:
            return
        self._reported = key
        self._emit(LeaseSeen(utcnow(), leader, epoch, self._held, new))

    def _report_loss(self) -> None:
        """Tell the keeper at once that we no longer hold the lease (stop acting)."""
        self._held = False
        leader, epoch, _ = self._reported or (None, 0, False)
        self._report(leader, epoch)

    async def _lost(self, exc: BaseException) -> None:
        if self._conn is not None or self._held:
            log.warning("lease_session_lost", error=type(exc).__name__, held=self._held)
        await self._close(graceful=False)

    def _terminated(self, conn: object) -> None:
        # Called by asyncpg when the session ends (killed, server gone): the lock went
        # with it, so stop acting now, not at the next round.
        if conn is not self._conn:
            return  # one we closed ourselves
        self._conn = None
        if self._held:
            log.warning("lease_session_lost", error="connection closed", held=True)
            self._report_loss()
        self._wake.set()

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._wake.set()  # the lease changed hands: read it now

    async def _close(self, graceful: bool = True) -> None:
        conn, self._conn = self._conn, None
        if self._held:
            self._report_loss()
        if conn is None:
            return
        if not graceful:  # a broken or hung session: no goodbye to wait for
            conn.terminate()
            return
        try:
            await conn.close(timeout=CLOSE_TIMEOUT_S)
        except TRANSIENT:
            conn.terminate()
