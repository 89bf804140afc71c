"""Wiring: one event loop, one TaskGroup, signals, readiness, live reload, ordered shutdown.

Only this module creates long-lived tasks. Each component exposes
`run(ready)`; READY=1 goes to systemd once every component said it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from clawd.backup.manager import BackupManager
from clawd.control import ControlServer, socket_path
from clawd.detection.guard import SelfHealthGuard
from clawd.detection.indirect import IndirectProber
from clawd.detection.suspicion import DetectorSettings
from clawd.detection_config import guard_settings
from clawd.discovery import Discovery
from clawd.errors import ClawdError, MetricsServerError
from clawd.explain import explain, find_peer
from clawd.fleet import FleetKeeper, summary
from clawd.fleetops.distribution import ConfigDistributor
from clawd.fleetops.fence import FenceToken
from clawd.fleetops.leadership import acting_leader
from clawd.fleetops.payload import ConfigDocument
from clawd.fleetops.recovery import Recoverer
from clawd.fleetview import FleetView, ProbeRequest, Thresholds, initial_view
from clawd.history.rollup import RollupMaintainer
from clawd.incidents import IncidentRecorder
from clawd.journal import JournalSender
from clawd.logs import configure_logging
from clawd.loopmon import LoopMonitor
from clawd.metrics.adapter import DaemonSource, backup_state
from clawd.metrics.registry import FleetMetrics
from clawd.metrics.server import MetricsServer
from clawd.model import Instance, utcnow
from clawd.notify import Notifier
from clawd.observations import (
    EpochSeen,
    Observation,
    PeerConfigured,
    PingResult,
    ProbeResult,
    SelfChanged,
)
from clawd.ping_peer import PingTarget
from clawd.pinger import Pinger
from clawd.reconciler import Reconciler
from clawd.reload import ConfigWatcher, Reloader
from clawd.retention.connect import dedicated_connection
from clawd.retention.pruner import RetentionPruner
from clawd.settings import Settings, default_config_path, self_instance
from clawd.skills.syncer import SkillSyncer
from clawd.ssh_client import Connector
from clawd.status_view import peer_rows
from clawd.store.factory import build_repository, build_sink
from clawd.store.migrations import install_migration_files
from clawd.store.pg_sink import PgSink

log = structlog.get_logger("clawd.daemon")

STOP_SOURCES_SECONDS = 2.0  # then in-flight pings are cancelled: SIGTERM exits within 5 s
SHUTDOWN_FLUSH_SECONDS = 2.5
START_SECONDS = 60.0
# mDNS finds announced peers ~1.2 s after clawd starts here (zeroconf's own start-up, then
# the answers): with discovery on, the start-up election waits this long at least for
# peers the store does not know yet.
DISCOVERY_SETTLE_SECONDS = 3.0


def thresholds(settings: Settings) -> Thresholds:
    ping, d = settings.ping, settings.detection
    window = d.partition_window_seconds or 2 * ping.interval_seconds + ping.timeout_seconds
    # Two rounds: a peer whose first round came before its SSH link was up gets another.
    settle = 2 * ping.interval_seconds + ping.timeout_seconds
    discovery = DISCOVERY_SETTLE_SECONDS if settings.discovery.enabled else 0.0
    return Thresholds(
        mdns_grace_misses=ping.mdns_grace_misses,
        detector=DetectorSettings(
            kind=d.detector,
            phi_suspect=d.phi_suspect,
            phi_offline=d.phi_offline,
            offline_after_missed=ping.offline_after_missed,
            window=d.history_window,
            min_std_fraction=d.min_std_fraction,
            tail_prior=d.tail_prior,
        ),
        interval_seconds=ping.interval_seconds,
        recover_after=d.recover_after_successes,
        flap_high=d.flap_high_percent,
        flap_low=d.flap_low_percent,
        probes=d.indirect_probes,
        # Long enough for the helpers' own timeouts and an SSH round trip to them.
        probe_wait=timedelta(seconds=2 * d.probe_timeout_seconds + ping.timeout_seconds),
        partition_min_peers=d.partition_min_peers,
        partition_fraction=d.partition_fraction,
        partition_window=timedelta(seconds=window),
        settle=timedelta(seconds=max(settle, discovery)),
        settle_min=timedelta(seconds=discovery),
    )


def ping_targets(view: FleetView, default_user: str) -> dict[str, PingTarget]:
    return {
        gid: PingTarget(
            gid, r.instance.ip, r.instance.ssh_port, r.instance.ssh_user or default_user
        )
        for gid, r in view.peers.items()
        if r.instance.ip
    }


def static_peers(settings: Settings) -> list[Instance]:
    return [
        Instance(
            gateway_id=p.gateway_id or p.name,
            name=p.name,
            ip=p.ip,
            ssh_user=p.ssh_user or settings.instance.ssh_user,
            ssh_port=p.ssh_port,
            lead_number=p.lead_number,
        )
        for p in settings.peers
    ]


def _first_leaf(group: BaseExceptionGroup[ClawdError]) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class Daemon:
    def __init__(
        self, settings: Settings, document: ConfigDocument, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.document = document  # what `settings` were validated from (reload.load_in_force)
        self.config_path = config_path or default_config_path()
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._sink_task: asyncio.Task[None] | None = None
        self._targets: Mapping[str, PingTarget] = {}
        self._probes: set[asyncio.Task[None]] = set()
        self.loop_monitor = LoopMonitor()

    # -- signals ------------------------------------------------------------

    def request_stop(self, signame: str = "SIGTERM") -> None:
        """First request stops gracefully; a second one forces the exit.

        The flag is set before anything is logged: no failure to log may keep clawd up."""
        if self._stop.is_set():
            with contextlib.suppress(Exception):
                log.warning("stop_forced", signal=signame)
            raise SystemExit(1)
        self._stop.set()
        with contextlib.suppress(Exception):
            log.info("stop_requested", signal=signame)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload_from("SIGHUP")))
        loop.add_signal_handler(signal.SIGUSR1, self.backups.request, "SIGUSR1")

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        assert self._tg is not None
        self._tg.create_task(coro)

    async def _reload_from(self, source: str) -> dict[str, Any]:
        self.notifier.reloading()
        try:
            result = await self.reloader.reload(source)
        finally:
            self.notifier.send("READY=1", f"STATUS={self._status_text()}")
        return {"ok": result.ok, "changed": result.changed, "error": result.error}

    # -- start and stop -------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        s = self.settings
        # First: the fleet keeper's status callback already shows the backup state.
        self.backups = BackupManager(s, on_change=self._backup_changed)
        self.repo = build_repository(s)
        self.repo.watch_sink(lambda: self.notifier.status(self._status_text()))
        loaded = await self.repo.open()
        await asyncio.to_thread(install_migration_files, s.home)
        snap = loaded.snapshot
        me = self.repo.me
        view = initial_view(me, snap.instances, snap.peers, snap.leader)
        recorder = IncidentRecorder(self.repo, JournalSender.if_attached())
        self.guard = SelfHealthGuard(guard_settings(s))
        self.keeper = FleetKeeper(
            self.repo,
            recorder,
            Reconciler(thresholds(s)),
            view,
            persist_interval=s.storage.peer_file_interval_seconds,
            on_change=self._fleet_changed,
            guard=self.guard,
            loop_stall=self.loop_monitor.current_stall,
            on_probe=self._probe,
            on_doubt=self._doubt,
        )
        for instance in static_peers(s):
            self.keeper.emit(PeerConfigured(instance, utcnow()))
        self.metrics = FleetMetrics(
            DaemonSource(
                view=lambda: self.keeper.view,
                backup=lambda: backup_state(self.backups),
                sink=lambda: self.repo.sink,
                lag=self.loop_monitor,
            )
        )
        recorder.listeners.append(self.metrics.count_incident)
        self.metrics_server: MetricsServer | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self.pinger = Pinger(s.ping, s.ssh, s.home, self._ping_observed)
        d = s.detection
        self.prober = IndirectProber(
            self.pinger.connection,
            command=d.probe_command,
            timeout=d.probe_timeout_seconds,
            k=d.indirect_probes,
        )
        # Leader actions open their own connections only to peers the pinger has none to.
        self.ops_connector = Connector(s.ssh, s.home)
        # Over the pinger's open connection when there is one: no handshake per action.
        borrow = self.pinger.connection
        self.recoverer = Recoverer(
            s,
            self.document,
            self.ops_connector,
            recorder,
            self.pinger.recheck_install,
            borrow,
            on_fenced=self._fenced,
        )
        self.distributor = ConfigDistributor(
            s,
            self.document,
            self.ops_connector,
            borrow,
            on_fenced=self._fenced,
            recheck=self.pinger.recheck_install,
        )
        self.skills = SkillSyncer(s, self.repo, recorder)

        # History upkeep: the acting leader only, each run on its own short-lived
        # connection so it never takes a writer's pool slot.
        def history_leader() -> bool:
            return self.settings.backend == "postgres" and acting_leader(self.keeper.view)

        def history_connection() -> AbstractAsyncContextManager[asyncpg.Connection]:
            return dedicated_connection(self.settings.postgres)

        self.pruner = RetentionPruner(s.history, history_connection, history_leader)
        self.rollup = RollupMaintainer(history_connection, history_leader)
        for leader_work in (self.recoverer, self.distributor):
            leader_work.update_view(view)
        self.discovery = (
            Discovery(me, s.discovery, self.keeper.emit) if s.discovery.enabled else None
        )
        self.reloader = Reloader(
            self.config_path,
            s,
            self._apply_settings,
            self.document,
            on_document=(self.recoverer.update_document, self.distributor.update_document),
        )
        self.watcher = ConfigWatcher(self.config_path, lambda: self._reload_from("file"))
        self.control = ControlServer(
            socket_path(s.home),
            {
                "reload": lambda _req: self._reload_from("clawd reload"),
                "status": self._status_request,
                "backup": self.backups.handle_control,
                "config-push": self.distributor.handle_control,
                "skills-sync": self.skills.handle_control,
            },
        )
        self._install_signals(loop)
        try:
            await self._supervise()
        finally:
            await self.repo.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0

    async def _supervise(self) -> None:
        s, me = self.settings, self.repo.me
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await self._start(tg)
                log.info(
                    "ready",
                    backend=s.backend,
                    home=str(s.home),
                    gateway=me.gateway_id,
                    peers=len(self.keeper.view.peers),
                    postgres=self._pg_state(),
                )
                self.notifier.send("READY=1", f"STATUS={self._status_text()}")
                await self._stop.wait()
                self.notifier.send("STOPPING=1")
                await self._shutdown()
        except* ClawdError as group:
            # A component failed for a reason a person can fix (duplicate gateway
            # id, bad address): report it as such, not as a traceback.
            first = _first_leaf(group)
            log.error("component_failed", error=str(first))
            raise ClawdError(str(first)) from None

    async def _start(self, tg: asyncio.TaskGroup) -> None:
        starting: list[tuple[str, asyncio.Event]] = []

        def start(name: str, run: Any) -> asyncio.Task[None]:
            ready = asyncio.Event()
            starting.append((name, ready))
            task: asyncio.Task[None] = tg.create_task(run(ready), name=name)
            return task

        if self.repo.sink is not None:
            self._sink_task = start("postgres", self.repo.sink.run)
        self._keeper_task = start("fleet", self.keeper.run)
        self._sources = [start("pinger", self.pinger.run)]
        if self.discovery is not None:
            self._sources.append(start("discovery", self.discovery.run))
        self._sources += [
            start("config-watch", self.watcher.run),
            start("control", self.control.run),
            start("backup", self.backups.run),
            start("recovery", self.recoverer.run),
            start("distribution", self.distributor.run),
            start("skills", self.skills.run),
            start("retention", self.pruner.run),
            start("rollup", self.rollup.run),
        ]
        if (address := self.settings.metrics.address()) is not None:
            # At start a busy port is an error to fix; after a reload it only logs.
            self.metrics_server = MetricsServer(address, self.metrics)
            self._metrics_task = start("metrics", self.metrics_server.run)
        self._watchdog_task = start("watchdog", self.notifier.feed_watchdog)
        self._monitor_task = start("loop-monitor", self.loop_monitor.run)
        for name, ready in starting:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the task
                # group's cancel when a component fails just as another gets ready, and
                # start would then wait for a component that is gone.
                async with asyncio.timeout(START_SECONDS):
                    await ready.wait()
            except TimeoutError:
                log.error("start_timeout", component=name, seconds=START_SECONDS)
                raise

    async def _shutdown(self) -> None:
        """Stop taking in work, let in-flight work finish (bounded), flush, close."""
        self.pinger.stop()
        for task in self._probes:  # a verdict would come too late to matter
            task.cancel()
        if self.discovery is not None:
            self.discovery.stop()
        self.watcher.stop()
        self.control.stop()
        self.backups.stop()  # a running pg_dump is killed, its partial removed
        self.recoverer.stop()
        self.distributor.stop()
        self.skills.stop()
        self.pruner.stop()
        self.rollup.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        stopping = [*self._sources, *([self._metrics_task] if self._metrics_task else [])]
        _, late = await asyncio.wait(stopping, timeout=STOP_SOURCES_SECONDS)
        for task in late:
            log.warning("stop_timeout", component=task.get_name())
            task.cancel()
        self.keeper.stop()
        await self._keeper_task
        try:
            await asyncio.wait_for(self.repo.flush(), SHUTDOWN_FLUSH_SECONDS)
        except TimeoutError:
            log.error(
                "shutdown_flush_timeout",
                seconds=SHUTDOWN_FLUSH_SECONDS,
                note="pending writes stay in the spool and are sent at next start",
            )
        await self._stop_sink(self.repo.detach_sink())
        self._watchdog_task.cancel()
        self._monitor_task.cancel()

    async def _stop_sink(self, sink: PgSink | None) -> None:
        if sink is None:
            return
        sink.stop()
        if self._sink_task is not None:
            await self._sink_task
            self._sink_task = None
        await sink.close()

    # -- live changes ---------------------------------------------------------

    def _status_text(self, view: FleetView | None = None) -> str:
        text = f"{summary(view or self.keeper.view)}; {self.backups.status_line()}"
        pg = self._pg_state()
        return text if pg in ("off", "connected") else f"{text}; postgres {pg}"

    def _probe(self, request: ProbeRequest) -> None:
        """Ask other peers to probe a suspect (the reconciler asked); the verdict comes back
        as an observation."""

        async def probe() -> None:
            try:
                verdict = await self.prober.probe(
                    request.target, request.host, request.port, request.helpers
                )
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
            self.keeper.emit(result)

        if self._tg is not None and not self._stop.is_set():
            task = self._tg.create_task(probe(), name=f"probe-{request.target}")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    def _doubt(self, doubting: bool) -> None:
        self.pinger.stretch(self.guard.stretch if doubting else 1.0)

    def _fenced(self, holder: FenceToken) -> None:
        self.keeper.emit(EpochSeen(utcnow(), holder.epoch, holder.gateway_id, holder.lead_number))

    def _ping_observed(self, observation: Observation) -> None:
        if isinstance(observation, PingResult):
            self.metrics.observe_ping(observation)
        self.keeper.emit(observation)

    async def _restart_metrics(self, new: Settings) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()
            if self._metrics_task is not None:
                await self._metrics_task
            self.metrics_server = self._metrics_task = None
        address = new.metrics.address()
        if address is None:
            log.info("metrics_off")
            return
        server = MetricsServer(address, self.metrics)
        ready = asyncio.Event()
        assert self._tg is not None
        task = self._tg.create_task(self._serve_metrics(server, ready), name="metrics")
        self.metrics_server, self._metrics_task = server, task

    @staticmethod
    async def _serve_metrics(server: MetricsServer, ready: asyncio.Event) -> None:
        try:
            await server.run(ready)
        except MetricsServerError as exc:
            log.error("metrics_unavailable", error=str(exc))

    def _backup_changed(self) -> None:
        self.notifier.status(self._status_text())

    def _fleet_changed(self, view: FleetView) -> None:
        self.notifier.status(self._status_text(view))
        self.recoverer.update_view(view)
        self.distributor.update_view(view)
        targets = ping_targets(view, self.settings.instance.ssh_user)
        if targets != self._targets:
            self._targets = targets
            self.pinger.set_targets(targets)
            self.guard.forget(set(targets))

    async def _apply_settings(self, new: Settings, changed: list[str]) -> None:
        old, self.settings = self.settings, new
        sections = {key.split(".")[0] for key in changed}
        self.backups.update_settings(new)
        self.recoverer.update_settings(new)
        self.distributor.update_settings(new)  # any edit of config.json is pushed
        self.skills.update_settings(new)
        self.pruner.update_settings(new.history)
        if sections & {"ping", "ssh", "detection"}:
            self.ops_connector.update(new.ssh)
            self.pinger.update_settings(new.ping, new.ssh)
            self.keeper.reconciler = Reconciler(thresholds(new))
            d = new.detection
            self.guard.configure(guard_settings(new))
            self.prober.configure(
                command=d.probe_command, timeout=d.probe_timeout_seconds, k=d.indirect_probes
            )
        if "storage" in sections:
            self.keeper.persist_interval = new.storage.peer_file_interval_seconds
        if "peers" in sections:
            for instance in static_peers(new):
                self.keeper.emit(PeerConfigured(instance, utcnow()))
        if "log" in sections:
            configure_logging(new.log.level, home=new.home)
        if "metrics" in sections:
            await self._restart_metrics(new)
        if "instance" in sections:
            me = self_instance(new)
            self.repo.me = me
            await self.repo.json.write_state(me)
            await self.repo.upsert_instance(me)
            # Through the keeper: the election re-runs, the epoch is kept (on_change follows).
            self.keeper.emit(SelfChanged(me, utcnow()))
            if self.discovery is not None:
                await self.discovery.update_me(me)
        if sections & {"backend", "postgres"} and (
            new.backend != old.backend or new.backend == "postgres"
        ):
            await self._switch_backend(new)

    async def _switch_backend(self, new: Settings) -> None:
        await self._stop_sink(self.repo.detach_sink())
        if new.backend == "postgres":
            sink = build_sink(new)
            await self.repo.attach_sink(sink)
            ready = asyncio.Event()
            assert self._tg is not None
            self._sink_task = self._tg.create_task(sink.run(ready), name="postgres")
            await ready.wait()
        log.info("backend_switched", backend=new.backend, postgres=self._pg_state())

    # -- control requests -----------------------------------------------------

    async def _status_request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        view = self.keeper.view
        t = self.keeper.reconciler.t
        if (wanted := request.get("why")) is not None:
            record = find_peer(view, str(wanted))
            if record is None:
                return {"ok": False, "error": f"no peer with gateway id or name {wanted!r}"}
            return {"ok": True, "why": explain(view, record, t)}
        rows = peer_rows(
            {g: r.instance for g, r in view.peers.items()},
            {g: r.state for g, r in view.peers.items()},
        )
        for row in rows:
            record = view.peers[row["gatewayId"]]
            row["phi"] = round(min(record.phi, 999.0), 2)
            row["rule"] = record.rule
        return {
            "ok": True,
            "summary": summary(view),
            "leader": view.leader,
            "postgres": self._pg_state(),
            "backup": self.backups.status_line(),
            "loopLagMs": self.loop_monitor.percentiles_ms(),
            "pinger": self.pinger.counters(),
            "observations": self.keeper.observations,
            "epoch": view.epoch,
            "doubting": view.doubting,
            "partition": sorted(view.partition.members) if view.partition else None,
            "detector": t.detector.kind,
            "peers": rows,
        }

    def _pg_state(self) -> str:
        sink = self.repo.sink
        if sink is None:
            return "off"
        return sink.describe()
