"""Bootstrap: builds the process's runtime from settings — the store (migrated), the
fleet (twin or real cluster), the metrics source, the monitor and, where this process
runs one, the controller loop with its steps wired to the store.

Created once per process by ``app.services.runtime`` (a ``st.cache_resource``
factory) or by ``python -m app.controller``. Nothing here calls Streamlit; the
background threads (monitor sampling without a controller, the controller loop,
the history backfill) open their own database sessions.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.history import Backfill, backfill_history
from app.rollout_step import build_rollout_step
from core.adapters.exporter import ExporterHandle, serve_registry
from core.adapters.webhook import HttpWebhookSender
from core.alerts import AlertThresholds
from core.catalog import Catalog
from core.clock import SystemClock
from core.controller import ControllerLoop, PlacementConfig, PlacementStep, PlacementWorker
from core.controller.autoscale import AutoscaleStep, Autoscaling
from core.controller.feedback import FeedbackRunner, FeedbackStep
from core.controller.metrics import ControllerMetrics
from core.controller.monitor import Monitor, MonitorState, MonitorStep
from core.controller.notify import OutboxPruneStep, notify_step
from core.controller.retention import retention_step
from core.errors import SchedulerError, TransientError
from core.manifest import render_pod
from core.model import MpsSlice, WorkloadClass
from core.monitor import FLEET
from core.placement import Scheduler
from core.ports import Clock, Cluster, MetricPoint, Metrics
from core.redact import redact_url
from core.scheduling import build_scheduler
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from core.telemetry import FleetTelemetry
from db import decisions, versions
from db.autoscale_history import daily_rate_lookup
from db.engine import database_url, make_engine, session_factory, upgrade
from db.outbox import SqlNotificationOutbox
from db.stores import (
    SqlAutoscalingStore,
    SqlFeedbackStore,
    SqlFlagStore,
    SqlLeaseStore,
    SqlMetricSink,
    SqlPlacementStore,
    SqlRetentionStore,
    SqlWeightSource,
)

log = logging.getLogger(__name__)


__all__ = ["Backfill", "ControllerLoop", "Monitor", "MonitorState", "Runtime",
           "backfill_history", "build_controller", "build_monitor", "build_runtime"]


class NoMetrics:
    """The Metrics port when no source is configured: always unavailable, with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def available(self) -> bool:
        return False

    def telemetry(self) -> FleetTelemetry:
        raise TransientError(f"metrics unavailable: {self.reason}")


def process_identity(role: str, settings: Settings) -> str:
    """A controller identity no other process shares: host (the pod's name in
    Kubernetes), process id and a random part. Two processes on one host, or a pod
    restarted under the same name, must never both think they hold "the" lease."""
    host = settings.runtime.hostname or platform.node()
    return f"{role}@{host}/{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _Periodic:
    """Runs ``tick`` in a daemon thread, again ``pause_s(seconds it took)`` after each,
    until ``stop``."""

    def __init__(self, *, name: str, tick: Callable[[], None],
                 pause_s: Callable[[float], float]) -> None:
        self._tick, self._pause_s = tick, pause_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._tick()
            self._stop.wait(self._pause_s(time.monotonic() - started))


class MonitorThread(_Periodic):
    """Samples every ``interval_s`` in a thread, for a console that runs no controller
    (``persist=False``: a live view only; the controller process stores samples)."""

    def __init__(self, monitor: Monitor, *, persist: bool) -> None:
        self.monitor = monitor
        self.persist = persist
        super().__init__(name="gsc-monitor", tick=self._sample,
                         pause_s=lambda took_s: max(0.5, monitor.interval_s - took_s))

    def _sample(self) -> None:
        try:
            self.monitor.sample_once(persist=self.persist)
        except Exception as exc:  # keep sampling; the panels show the error
            log.exception("monitor sample failed")
            self.monitor.fail(f"sampling failed: {exc}")


class TwinTicker(_Periodic):
    """Keeps the embedded twin's simulation caught up to the clock, every ``every_s``, in a
    thread: a page's read (which catches the simulation up first) then simulates at most
    that much, not the seconds since the last read (5,000 GPUs: ~50 ms of simulation per
    simulated second, which a page rerun every 5 s would otherwise pay itself)."""

    def __init__(self, twin: Twin, *, every_s: float = 1.0) -> None:
        self.twin = twin
        self.every_s = every_s
        super().__init__(name="gsc-twin-ticker", tick=self._sync,
                         pause_s=lambda took_s: every_s)

    def _sync(self) -> None:
        try:
            self.twin.sync()
        except Exception:  # the next read catches up (and shows what went wrong)
            log.exception("twin catch-up failed")


def build_monitor(*, metrics: Metrics, factory: sessionmaker[Session], interval_s: float,
                  thresholds: AlertThresholds | None = None, cluster: Cluster | None = None,
                  catalog: Catalog | None = None, notify_alerts: bool = True,
                  fleet_only: bool = False) -> Monitor:
    """A monitor storing into ``factory``'s database (``notify_alerts``: queue webhook
    messages for critical alerts; off for simulated history). ``fleet_only``: store only
    the fleet's series, the ones decisions read (next to a Prometheus, which holds the
    per-model and per-GPU history the charts read)."""
    return Monitor(metrics=metrics, sink=SqlMetricSink(factory, notify_alerts=notify_alerts),
                   interval_s=interval_s,
                   thresholds=thresholds, cluster=cluster, catalog=catalog,
                   keep=_fleet_point if fleet_only else None)


def _fleet_point(point: MetricPoint) -> bool:
    return point.key == FLEET


def build_controller(*, factory: sessionmaker[Session], cluster: Cluster, clock: Clock,
                     settings: Settings, identity: str, lease_ttl_s: float = 15.0,
                     interval_s: float = 2.0, placement: PlacementConfig | None = None,
                     monitor: Monitor | None = None, autoscale: bool = True,
                     feedback: bool = True) -> ControllerLoop:
    """The controller loop over this store and cluster: monitoring (when a monitor is
    given), autoscaling and feedback on its samples, then placement."""
    metrics = ControllerMetrics()
    weights = SqlWeightSource(factory)

    def active_scheduler() -> Scheduler:
        active = weights.active_weights()
        if active is None:
            return build_scheduler(settings)
        return build_scheduler(settings, weights=active[0], weight_version=active[1])

    flags = SqlFlagStore(factory)
    store = SqlPlacementStore(factory)
    steps: list[Any] = []
    if monitor is not None:
        steps.append(MonitorStep(monitor, metrics=metrics))
        if autoscale:
            steps.append(AutoscaleStep(
                Autoscaling(store=SqlAutoscalingStore(factory), flags=flags, cluster=cluster,
                            settings=settings, identity=identity, metrics=metrics,
                            daily=daily_rate_lookup(factory)), monitor))
        if feedback:
            steps.append(FeedbackStep(FeedbackRunner(store=SqlFeedbackStore(factory),
                                                     cluster=cluster, settings=settings,
                                                     identity=identity), monitor))
    worker = PlacementWorker(
        store=store, cluster=cluster, clock=clock, scheduler=active_scheduler,
        catalog=settings.catalog, max_clients=settings.placement.max_mps_clients_per_gpu,
        worker=identity, config=placement, timer=time.perf_counter,
        on_decision=metrics.decision_seconds.observe)
    placement_step = PlacementStep(worker, metrics=metrics, timer=time.perf_counter)
    steps.append(placement_step)
    rollout = build_rollout_step(factory=factory, cluster=cluster, clock=clock,
                                 settings=settings, monitor=monitor, registry=metrics.registry)
    if rollout is not None:  # MPS configuration changes (SPEC §4): plans advance here
        steps.append(rollout)
    steps.append(retention_step(store=SqlRetentionStore(factory), settings=settings.retention,
                                timer=time.perf_counter))
    if settings.notify.enabled:  # webhook messages from the outbox ([notify] webhook_url)
        steps.append(notify_step(outbox=SqlNotificationOutbox(factory),
                                 sender=HttpWebhookSender.from_settings(settings.notify),
                                 settings=settings.notify, timer=time.perf_counter))
    else:  # no webhook: old messages are deleted, sent or not
        steps.append(OutboxPruneStep(SqlNotificationOutbox(factory), settings.notify))
    loop = ControllerLoop(leases=SqlLeaseStore(factory), queue=store, clock=clock,
                          identity=identity, steps=steps, metrics=metrics,
                          lease_ttl_s=lease_ttl_s, interval_s=interval_s)
    placement_step.heartbeat = loop.heartbeat
    if rollout is not None:
        rollout.heartbeat = loop.heartbeat  # renews the lease between rollout steps
    return loop


@dataclass
class Runtime:
    settings: Settings
    url: str
    engine: Engine
    factory: sessionmaker[Session]
    cluster: Cluster
    metrics: Metrics
    monitor: Monitor
    twin: Twin | None = None
    sampler: MonitorThread | None = None
    metrics_source: str = "embedded twin"
    notes: list[str] = field(default_factory=list)
    backfill: Backfill | None = None  # the twin's history, streaming in (app.history)
    controller: ControllerLoop | None = None  # when the loop runs in this process
    controller_thread: threading.Thread | None = None
    controller_metrics: ExporterHandle | None = None  # the embedded controller's /metrics
    ticker: TwinTicker | None = None  # keeps the twin caught up between reads

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
        if self.controller is not None:
            self.controller.stop()
        if self.controller_thread is not None:
            self.controller_thread.join(timeout=30)
        if self.controller_metrics is not None:
            self.controller_metrics.stop()
        if self.sampler is not None:
            self.sampler.stop()
        if self.backfill is not None:
            self.backfill.stop()
            self.backfill.join(timeout=30)
        close = getattr(self.cluster, "close", None)
        if callable(close):
            close()
        self.engine.dispose()


def _bind_held(twin: Twin, factory: sessionmaker[Session]) -> int:
    """Re-create, on a fresh twin, the pods of requests the store says are bound."""
    with factory() as s:
        held = decisions.held_placements(s)
    bound = 0
    for h in held:
        wc = WorkloadClass(h.workload_class)
        sl = MpsSlice(owner=h.request_id, thread_pct=h.share_pct, memory_mib=h.memory_mib,
                      model=h.model_name, workload_class=wc)
        try:
            twin.bind(render_pod(request=h.request, node=h.node, gpu_index=h.gpu_index,
                                 mps_slice=sl, workload_class=wc))
            bound += 1
        except SchedulerError as exc:
            log.warning("could not restore %s on %s: %s", h.request_id, h.node, exc)
    return bound


def _serve_controller_metrics(loop: ControllerLoop, settings: Settings, notes: list[str]
                              ) -> ExporterHandle | None:
    """The embedded controller's ``/metrics`` on ``[runtime.controller] metrics_host``
    (loopback by default) and ``embedded_metrics_port`` (0: not served). A port in use
    (another console on this host) is noted, not fatal."""
    ctl = settings.runtime.controller
    if not ctl.embedded_metrics_port:
        return None
    try:
        handle = serve_registry(loop.metrics.registry, host=ctl.metrics_host,
                                port=ctl.embedded_metrics_port)
    except OSError as exc:
        log.warning("controller metrics not served on %s:%d: %s", ctl.metrics_host,
                    ctl.embedded_metrics_port, exc)
        notes.append(f"controller metrics: {ctl.metrics_host}:{ctl.embedded_metrics_port} "
                     f"unavailable ({exc.strerror or exc})")
        return None
    notes.append(f"controller metrics: {handle.url}")
    return handle


def freeze_long_lived() -> None:
    """Take what exists now (modules, settings, the runtime's store, twin and caches: a
    5,000-GPU twin is ~140k objects that live as long as the process) out of the
    collector's sight (``gc.freeze``). Otherwise each full collection, one or two per
    monitor sample at that size, walks all of them again (~130 ms). Called once by a
    process's entry point after it built its runtime; the garbage is collected first,
    so none of it is kept."""
    gc.collect()
    gc.freeze()


def build_runtime(settings: Settings, *, background: bool = True) -> Runtime:
    """The store (migrated), the fleet, the metrics source and the monitor, as
    ``settings.runtime`` says (the settings source maps the environment onto it).

    ``background``: start the monitor and, in embedded mode, the controller loop
    (which then drives the monitor: the leader stores samples and autoscales on
    them). The controller process passes False and runs its own loop.
    """
    rt = settings.runtime
    url = database_url(rt.database_url)
    engine = make_engine(url)
    upgrade(engine)
    factory = session_factory(engine)
    with factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights, now=datetime.now(UTC))
    interval = rt.monitor_interval_s
    hours = rt.backfill_hours
    cluster_kind = rt.cluster
    prometheus_url = rt.prometheus_url
    twin: Twin | None = None
    cluster: Cluster
    if cluster_kind == "kubernetes":
        from core.adapters.kubernetes import KubernetesCluster, options_from_settings

        cluster = KubernetesCluster.connect(catalog=settings.catalog,
                                            options=options_from_settings(rt.kube),
                                            kubeconfig=rt.kubeconfig or None,
                                            in_cluster=rt.in_cluster)
    else:
        twin = Twin(settings, clock=SystemClock(), config=TwinConfig(
            warmup_s=900, routing=settings.sim.routing,
            startup_delay_s=settings.sim.pod_startup_s))
        cluster = twin
    metrics: Metrics
    if prometheus_url:
        from core.adapters.prometheus_metrics import PrometheusMetrics

        metrics = PrometheusMetrics(prometheus_url, max_sample_age_s=max(60.0, 3 * interval))
        source = f"Prometheus at {redact_url(prometheus_url)}"
    elif twin is not None:
        metrics, source = twin, "embedded twin"
    else:
        metrics = NoMetrics("set PROMETHEUS_URL to read a real cluster's telemetry")
        source = "none (PROMETHEUS_URL is not set)"
    monitor = build_monitor(metrics=metrics, factory=factory, interval_s=interval,
                            thresholds=settings.alerts, cluster=cluster,
                            catalog=settings.catalog, fleet_only=bool(prometheus_url))
    runtime = Runtime(settings=settings, url=url, engine=engine, factory=factory,
                      cluster=cluster, metrics=metrics, monitor=monitor, twin=twin,
                      metrics_source=source)
    if twin is not None and not prometheus_url and hours > 0:
        runtime.backfill = Backfill(settings, factory, hours=hours, interval_s=interval)
        runtime.notes.append(f"history: simulating the last {hours:g} h in the background")
    if twin is not None:
        restored = _bind_held(twin, factory)
        if restored:
            runtime.notes.append(f"restored {restored} bound placements onto the twin")
    if twin is not None and metrics is twin:
        monitor.sample_once()  # the twin answers at once: pages show figures from the start
    if not background:
        return runtime
    if twin is not None:
        runtime.ticker = TwinTicker(twin)
    if twin is not None and rt.embedded_controller:
        # The embedded default runs the controller here, like the controller Deployment
        # does in a cluster (it competes for the same lease): placement, monitoring into
        # the store, autoscaling and feedback.
        loop = build_controller(factory=factory, cluster=twin, clock=SystemClock(),
                                settings=settings, identity=process_identity("console", settings),
                                placement=PlacementConfig(bind_timeout_s=0), monitor=monitor)
        runtime.controller = loop
        runtime.controller_thread = threading.Thread(target=loop.run, name="gsc-controller",
                                                     daemon=True)
        runtime.controller_thread.start()
        runtime.notes.append("controller: running in this process")
        runtime.controller_metrics = _serve_controller_metrics(loop, settings, runtime.notes)
    else:
        # No controller in this process: in embedded mode this console keeps the history
        # itself; next to a real cluster the controller process stores the samples, and
        # the console only keeps a live view.
        runtime.sampler = MonitorThread(monitor, persist=twin is not None)
    return runtime
