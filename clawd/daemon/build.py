"""Builds the daemon's components from Settings, wired to each other, in their one order.

Adding a component means adding it to the list `assemble` returns, nothing else: it is
started, reconfigured on a reload and stopped from that list.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from clawd.act.backup.manager import BackupManager
from clawd.act.fleetops.distribution import ConfigDistributor
from clawd.act.fleetops.fence import FenceToken
from clawd.act.fleetops.leadership import acting_leader, addresses
from clawd.act.fleetops.recovery import Recoverer
from clawd.act.skills.syncer import SkillSyncer
from clawd.config.document import ConfigDocument
from clawd.config.reload import ConfigWatcher, InForce, Reloader
from clawd.config.settings import Settings, lease_on
from clawd.core.journal import JournalSender
from clawd.core.model import utcnow
from clawd.core.observations import EpochSeen, Observation, PeerConfigured, PingResult
from clawd.daemon.component import Component
from clawd.daemon.forget import ForgetAnswer
from clawd.daemon.live import Live
from clawd.daemon.membership import build_membership
from clawd.daemon.plan import Entry, Stop
from clawd.daemon.status import StatusAnswer
from clawd.decide.from_settings import guard_settings, static_peers, thresholds
from clawd.decide.guard import SelfHealthGuard
from clawd.decide.reconciler import Reconciler
from clawd.decide.view import FleetView, Lease, initial_view
from clawd.keep.history.rollup import RollupMaintainer
from clawd.keep.incidents import IncidentRecorder
from clawd.keep.keeper import FleetKeeper, KeeperHooks
from clawd.keep.lease import LeaderLease
from clawd.keep.retention.connect import dedicated_connection
from clawd.keep.retention.dbjob import LeaderDb
from clawd.keep.retention.pruner import RetentionPruner
from clawd.keep.store.factory import build_repository
from clawd.keep.store.migrations import install_migration_files
from clawd.keep.store.repository import FleetRepository
from clawd.keep.verdicts import FleetVerdicts, PendingOutages
from clawd.serve.alerts.service import AlertService
from clawd.serve.control import ControlServer, socket_path
from clawd.serve.metrics.adapter import DaemonSource, backup_state
from clawd.serve.metrics.registry import FleetMetrics
from clawd.serve.metrics.server import MetricsEndpoint
from clawd.serve.notify import Notifier, Watchdog
from clawd.sources.discovery import Discovery
from clawd.sources.indirect import IndirectProber
from clawd.sources.loopmon import LoopMonitor
from clawd.sources.mdns_ask import MdnsAsker
from clawd.sources.ping_peer import PingTarget
from clawd.sources.pinger import Pinger
from clawd.sources.ssh_client import Connector

Reload = Callable[[str], Awaitable[dict[str, Any]]]


def ping_targets(view: FleetView, default_user: str) -> dict[str, PingTarget]:
    """The peers to ping: those this machine probes (all, or its share when each machine
    has k observers), at the same addresses leader work uses (one reading of the view)."""
    return {
        gid: PingTarget(a.gateway_id, a.host, a.port, a.user)
        for gid, a in addresses(view, default_user).items()
        if view.probes(gid)
    }


@dataclass(slots=True)
class Parts:
    """The components in their order, and the few the daemon itself talks to."""

    entries: list[Entry]
    live: Live
    repo: FleetRepository
    keeper: FleetKeeper
    backups: BackupManager
    reloader: Reloader
    status: StatusAnswer


class _ViewFollowers:
    """What follows a new fleet view: systemd's status line, leader work, the ping targets."""

    def __init__(
        self,
        live: Live,
        notifier: Notifier,
        status: Callable[[FleetView], str],
        pinger: Pinger,
        guard: SelfHealthGuard,
        leader_work: tuple[Recoverer | ConfigDistributor | LeaderLease, ...],
    ) -> None:
        self.live, self.notifier, self.status = live, notifier, status
        self.pinger, self.guard, self.leader_work = pinger, guard, leader_work
        self._targets: Mapping[str, PingTarget] = {}

    def __call__(self, view: FleetView) -> None:
        self.notifier.status(self.status(view))
        for work in self.leader_work:
            work.update_view(view)
        targets = ping_targets(view, self.live.settings.instance.ssh_user)
        if targets != self._targets:
            self._targets = targets
            self.pinger.set_targets(targets)
            self.guard.forget(set(targets))


async def assemble(
    settings: Settings,
    document: ConfigDocument,
    config_path: Path,
    notifier: Notifier,
    reload: Reload,
) -> Parts:
    """Open the store, then build every component; none runs yet."""
    s = settings
    live = Live(s)

    # First: the fleet keeper's status callback already shows the backup state.
    def backups_changed() -> None:
        notifier.status(status.text())
        alerts.backups_changed(backups.last_error)

    backups = BackupManager(s, on_change=backups_changed)
    repo = build_repository(s)
    repo.watch_sink(lambda: notifier.status(status.text()))
    loaded = await repo.open()
    await asyncio.to_thread(install_migration_files, s.home)
    snap = loaded.snapshot
    me = repo.me
    view = initial_view(me, snap.instances, snap.peers, snap.leader)
    if lease_on(s):  # the leader lease decides leader and epoch
        view = dataclasses.replace(view, lease=Lease())
    loop_monitor = LoopMonitor()
    recorder = IncidentRecorder(repo, JournalSender.if_attached())
    guard = SelfHealthGuard(guard_settings(s))

    def ping_observed(observation: Observation) -> None:
        if isinstance(observation, PingResult):
            metrics.observe_ping(observation)
        keeper.emit(observation)

    def fenced(holder: FenceToken, reported_by: str) -> None:
        keeper.emit(
            EpochSeen(utcnow(), holder.epoch, holder.gateway_id, holder.lead_number, reported_by)
        )

    def doubt(doubting: bool) -> None:
        pinger.stretch(guard.stretch if doubting else 1.0)

    pinger = Pinger(s.ping, s.ssh, s.home, ping_observed)
    d = s.detection
    prober = IndirectProber(
        pinger.connection,
        timeout=d.probe_timeout_seconds,
        k=d.indirect_probes,
        on_verdict=lambda result: keeper.emit(result),
    )
    # Leader actions open their own connections only to peers the pinger has none to.
    ops_connector = Connector(s.ssh, s.home)
    # Over the pinger's open connection when there is one: no handshake per action.
    borrow = pinger.connection
    recoverer = Recoverer(
        s, document, ops_connector, recorder, pinger.recheck_install, borrow, on_fenced=fenced
    )
    distributor = ConfigDistributor(
        s, document, ops_connector, borrow, on_fenced=fenced, recheck=pinger.recheck_install
    )
    keeper = FleetKeeper(
        repo,
        recorder,
        Reconciler(thresholds(s)),
        view,
        persist_interval=s.storage.peer_file_interval_seconds,
        hooks=KeeperHooks(
            guard=guard,
            loop_stall=loop_monitor.current_stall,
            on_probe=prober.ask,
            on_doubt=doubt,
            on_recheck=pinger.recheck_install,
        ),
    )
    for instance in static_peers(s):
        keeper.emit(PeerConfigured(instance, utcnow()))
    # The peers this machine does not probe take the fleet's verdict (k observers each).
    verdicts = FleetVerdicts(keeper.emit, lambda: keeper.reconciler.t.observers > 0)
    # Telling people: with the fleet's record, its leader tells each row once (a rider).
    alerts = AlertService(s, s.home)
    recorder.annotators.append(alerts.silence_local)
    recorder.listeners.append(alerts.local_incident)
    riders = (verdicts, PendingOutages(), alerts.feed)
    lease = LeaderLease(s, lambda: keeper.view, keeper.emit, riders=riders)
    metrics = FleetMetrics(
        DaemonSource(
            view=lambda: keeper.view,
            backup=lambda: backup_state(backups),
            sink=lambda: repo.sink,
            lag=loop_monitor,
        )
    )
    recorder.listeners.append(metrics.count_incident)
    discovery: list[Component] = []
    finder: Discovery | None = None
    asker: MdnsAsker | None = None
    if s.discovery.enabled:
        # Announcements reach the keeper through membership: only once proven over SSH.
        membership = build_membership(me.gateway_id, live, keeper, ops_connector)
        finder = Discovery(me, s.discovery, membership.offer)
        # Whether a peer failing SSH still answers mDNS: fresh evidence, not the cache.
        asker = MdnsAsker(s.ping, s.discovery, finder, keeper.emit)
        discovery = [membership, finder, asker]
    status = StatusAnswer(
        keeper, backups, repo, pinger, loop_monitor, finder.announced if finder else None
    )
    if s.discovery.enabled:
        status.unverified = membership.unverified
    status.alerts = alerts.status
    # The followers need the status answer, which needs the keeper: joined in afterwards.
    keeper.hooks = dataclasses.replace(
        keeper.hooks,
        on_change=_ViewFollowers(
            live, notifier, status.text, pinger, guard, (recoverer, distributor, lease)
        ),
        on_mdns_query=asker.ask if asker else None,
    )
    skills = SkillSyncer(s, repo, recorder)

    # History upkeep: the acting leader only, each run on its own short-lived
    # connection so it never takes a writer's pool slot.
    def history_leader() -> bool:
        return live.settings.backend == "postgres" and acting_leader(keeper.view)

    def history_connection() -> AbstractAsyncContextManager[asyncpg.Connection]:
        return dedicated_connection(live.settings.postgres)

    history_db = LeaderDb(history_connection, history_leader)

    for leader_work in (recoverer, distributor):
        leader_work.update_view(view)
    reloader = Reloader(
        config_path,
        InForce(s, document),
        live.apply,
        on_document=(recoverer.update_document, distributor.update_document),
    )
    control = ControlServer(
        socket_path(s.home),
        {
            "reload": lambda _req: reload("clawd reload"),
            "status": status.request,
            "backup": backups.handle_control,
            "config-push": distributor.handle_control,
            "skills-sync": skills.handle_control,
            "peer-forget": ForgetAnswer(keeper, lambda: live.settings).request,
        },
    )
    # The one list of components: started in this order (each waited for until ready),
    # reconfigured in this order, stopped in the reverse order.
    sources: tuple[Component, ...] = (
        prober,
        pinger,
        *discovery,
        ConfigWatcher(config_path, lambda: reload("file")),
        control,
        alerts,  # before the lease: its rider hands the fleet's rows to this outbox
        lease,  # before the leader work: it decides who may act
        backups,  # at stop a running pg_dump is killed, its partial removed
        recoverer,
        distributor,
        skills,
        RetentionPruner(s.history, history_db),
        RollupMaintainer(history_db),
        MetricsEndpoint(s.metrics.address(), metrics),
    )
    entries = [
        Entry(loop_monitor, Stop.LAST),
        Entry(Watchdog(notifier), Stop.LAST),
        Entry(repo, Stop.DRAIN),
        Entry(keeper, Stop.DRAIN),
        *(Entry(source, Stop.SOURCE) for source in sources),
    ]
    live.components = [entry.component for entry in entries]
    return Parts(entries, live, repo, keeper, backups, reloader, status)
