"""The console's process-wide runtime: store, fleet (twin or real), metrics, monitor.

Created once per process by ``app.services.runtime`` (a ``st.cache_resource``
factory). The monitor is a background thread that never calls Streamlit: it
reads telemetry through the Metrics port every ``interval_s``, stores the
metric points, evaluates the alert rules and keeps the latest values for the
live panels to read.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from core.alerts import Alert, AlertEvaluator, AlertThresholds
from core.catalog import Catalog
from core.clock import ManualClock, SystemClock
from core.cost import CostAccountant, CostLine, LineKey, accumulate
from core.errors import SchedulerError, TransientError, ValidationError
from core.manifest import render_pod
from core.model import MpsSlice, Node, WorkloadClass
from core.monitor import FLEET, MetricPoint, alert_sample, metric_points
from core.ports import Cluster, Metrics
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from core.telemetry import FleetTelemetry
from db import decisions, metrics, versions
from db.costs import add_cost_lines
from db.engine import make_engine, session_factory, upgrade
from db.models import MetricSampleRow

log = logging.getLogger(__name__)

ENV_PROMETHEUS = "PROMETHEUS_URL"
ENV_BACKFILL_HOURS = "GSC_BACKFILL_HOURS"
ENV_MONITOR_INTERVAL = "GSC_MONITOR_INTERVAL_S"
ENV_CLUSTER = "GSC_CLUSTER"
ENV_EMBEDDED_CONTROLLER = "GSC_EMBEDDED_CONTROLLER"


class NoMetrics:
    """The Metrics port when no source is configured: always unavailable, with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def available(self) -> bool:
        return False

    def telemetry(self) -> FleetTelemetry:
        raise TransientError(f"metrics unavailable: {self.reason}")


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class MonitorState:
    latest: FleetTelemetry | None = None
    error: str | None = None
    firing: tuple[Alert, ...] = ()
    pending: tuple[Alert, ...] = ()
    last_sample_at: float | None = None


class Monitor:
    """Samples the fleet every ``interval_s`` into the store and the alert evaluator.

    With a ``cluster`` (and the ``catalog``'s prices) it also books cost (SPEC §3.8):
    each interval between two samples becomes cost lines under the layout the
    cluster reported with the interval's first sample, written in the same
    transaction as the samples' metric points. Cost needs the layout (which
    model holds which MPS share of which GPU), which only the cluster knows:
    without a cluster, no cost lines are written. The first sample after start
    opens the first interval; an interval longer than an hour (a gap) is not booked.
    """

    def __init__(self, *, metrics: Metrics, factory: sessionmaker[Session],
                 interval_s: float, thresholds: AlertThresholds | None = None,
                 cluster: Cluster | None = None, catalog: Catalog | None = None) -> None:
        self.metrics = metrics
        self.factory = factory
        self.interval_s = interval_s
        self.evaluator = AlertEvaluator(thresholds)
        self.state = MonitorState()
        if cluster is not None and catalog is None:
            raise ValueError("a Monitor that books cost (given a cluster) needs the catalog")
        self.cluster = cluster
        self.costs = None if cluster is None or catalog is None else CostAccountant(
            catalog, max_interval_s=max(3600.0, 3 * interval_s))
        # The last sample and the layout read with it: the start of the next interval.
        self._cost_prev: tuple[FleetTelemetry, tuple[Node, ...] | None] | None = None
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._persist = True

    def sample_once(self, *, persist: bool = True) -> MonitorState:
        """Read one sample; store it unless ``persist`` is False (a standby's live view)."""
        # One sample at a time: a read and its record never interleave with another's.
        with self._sample_lock:
            try:
                telemetry = self.metrics.telemetry()
            except TransientError as exc:
                with self._lock:
                    self.state.error = str(exc)
                return self.state
            if not persist:
                evaluation = self.evaluator.observe(alert_sample(telemetry))
                with self._lock:
                    self.state = MonitorState(
                        latest=telemetry, error=None, firing=evaluation.firing,
                        pending=tuple(a for a in evaluation.alerts if not a.firing),
                        last_sample_at=telemetry.timestamp)
                    self._cost_prev = None  # the leader books cost meanwhile
                return self.state
            self.record_many([telemetry], layouts=[self.layout()])
            return self.state

    def layout(self) -> tuple[Node, ...] | None:
        """The fleet layout now; None without a cluster or when it does not answer."""
        if self.cluster is None:
            return None
        try:
            return tuple(self.cluster.nodes())
        except SchedulerError as exc:  # this interval goes unbooked; sampling goes on
            log.warning("cost accounting: the cluster did not report its layout: %s", exc)
            return None

    def record(self, telemetry: FleetTelemetry, *, layout: tuple[Node, ...] | None = None
               ) -> None:
        """Evaluate one sample and store it (points, alert transitions, cost) in one transaction.

        ``layout``: the fleet layout read with the sample; read now when not given.
        """
        self.record_many([telemetry], layouts=None if layout is None else [layout])

    def record_many(self, samples: list[FleetTelemetry], *,
                    layouts: list[tuple[Node, ...] | None] | None = None) -> None:
        """Evaluate samples in order; store all of them in one transaction.

        ``layouts``: the fleet layout read with each sample; when not given, the
        layout now stands for every sample's.
        """
        if layouts is None:
            layouts = [self.layout()] * len(samples) if self.costs is not None else []
        elif len(layouts) != len(samples):
            raise ValueError("record_many needs one layout per sample")
        points: list[MetricPoint] = []
        events: list[dict[str, Any]] = []
        ledger: dict[LineKey, CostLine] = {}
        cost_prev = self._cost_prev
        state = self.state
        for i, telemetry in enumerate(samples):
            if self.costs is not None:
                layout = layouts[i]
                if cost_prev is not None:
                    held = cost_prev[1] if cost_prev[1] is not None else layout
                    if held is not None:
                        accumulate(ledger, self.costs.interval(prev=cost_prev[0],
                                                               cur=telemetry, layout=held))
                cost_prev = (telemetry, layout)
            evaluation = self.evaluator.observe(alert_sample(telemetry))
            previous = {(a.name, tuple(sorted(a.labels.items()))) for a in state.firing}
            at = utc(telemetry.timestamp)
            points += metric_points(telemetry)
            events += [{"name": a.name, "severity": a.severity, "state": "firing",
                        "labels": a.labels, "summary": a.summary, "now": at}
                       for a in evaluation.firing
                       if (a.name, tuple(sorted(a.labels.items()))) not in previous]
            events += [{"name": a.name, "severity": a.severity, "state": "resolved",
                        "labels": a.labels, "summary": "", "now": at}
                       for a in evaluation.resolved]
            state = MonitorState(
                latest=telemetry, error=None, firing=evaluation.firing,
                pending=tuple(a for a in evaluation.alerts if not a.firing),
                last_sample_at=telemetry.timestamp)
        with self.factory.begin() as s:
            metrics.add_samples(s, points)
            for event in events:
                metrics.record_alert(s, **event)
            add_cost_lines(s, ledger.values())
        with self._lock:
            self.state = state
            self._cost_prev = cost_prev

    def start(self, *, persist: bool = True) -> None:
        """Sample every ``interval_s`` in a thread; ``persist=False``: live view only."""
        self._persist = persist
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gsc-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once(persist=self._persist)
            except Exception as exc:  # keep sampling; the panels show the error
                log.exception("monitor sample failed")
                with self._lock:
                    self.state.error = f"sampling failed: {exc}"
            self._stop.wait(max(0.5, self.interval_s - (time.monotonic() - started)))


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
    metrics_source: str = "embedded twin"
    notes: list[str] = field(default_factory=list)
    backfill: threading.Thread | None = None
    controller: Any = None  # app.controller.ControllerLoop when one runs in this process
    controller_thread: threading.Thread | None = None

    def close(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        if self.controller_thread is not None:
            self.controller_thread.join(timeout=30)
        self.monitor.stop()
        if self.backfill is not None:
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


def backfill_history(settings: Settings, factory: sessionmaker[Session], *, hours: float,
                     interval_s: float, seed: int = 0) -> int:
    """Simulate the last ``hours`` on a twin of the default fleet and store them as history.

    Runs on its own twin and clock (in simulated time, fast), so the live twin and
    the monitor start at once; the charts fill in as soon as this is written.
    Skips what the store already holds (a restarted console keeps its history).
    The twin is also the cluster, so the history includes the cost ledger.
    """
    now = time.time()
    with factory() as s:
        last = s.scalar(select(func.max(MetricSampleRow.ts))
                        .where(MetricSampleRow.key == FLEET))
    start = max(now - hours * 3600, (last or 0.0) + interval_s)
    if start >= now - interval_s:
        return 0
    clock = ManualClock(start)
    twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=900, seed=seed))
    history = Monitor(metrics=twin, factory=factory, interval_s=interval_s,
                      thresholds=settings.alerts, cluster=twin, catalog=settings.catalog)
    batch: list[FleetTelemetry] = []
    layouts: list[tuple[Node, ...] | None] = []
    t = start
    while t < now - interval_s:
        clock.advance(max(0.0, t - clock.now()))
        batch.append(twin.telemetry())
        layouts.append(twin.nodes())
        t += interval_s
    history.record_many(batch, layouts=layouts)
    return len(batch)


def build_runtime(settings: Settings, url: str, env: Mapping[str, str] | None = None, *,
                  background: bool = True) -> Runtime:
    """The store (migrated), the fleet, the metrics source and the monitor.

    ``background``: start the monitor and, in embedded mode, the controller loop
    (which then drives the monitor: the leader stores samples and autoscales on
    them). The controller process passes False and runs its own loop.
    """
    env = os.environ if env is None else env
    engine = make_engine(url)
    upgrade(engine)
    factory = session_factory(engine)
    with factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights, now=datetime.now(UTC))
    interval = float(env.get(ENV_MONITOR_INTERVAL, "30"))
    hours = float(env.get(ENV_BACKFILL_HOURS, "3"))
    cluster_kind = env.get(ENV_CLUSTER, "embedded").strip().lower() or "embedded"
    if cluster_kind not in ("embedded", "kubernetes"):
        raise ValidationError(ENV_CLUSTER, "must be 'embedded' or 'kubernetes'")
    prometheus_url = env.get(ENV_PROMETHEUS, "").strip()
    twin: Twin | None = None
    cluster: Cluster
    if cluster_kind == "kubernetes":
        from core.adapters.kubernetes_cluster import KubernetesCluster, options_from_env

        cluster = KubernetesCluster.connect(catalog=settings.catalog,
                                            options=options_from_env(env),
                                            kubeconfig=env.get("KUBECONFIG") or None)
    else:
        twin = Twin(settings, clock=SystemClock(), config=TwinConfig(warmup_s=900))
        cluster = twin
    metrics: Metrics
    if prometheus_url:
        from core.adapters.prometheus_metrics import PrometheusMetrics

        metrics = PrometheusMetrics(prometheus_url)
        source = f"Prometheus at {prometheus_url}"
    elif twin is not None:
        metrics, source = twin, "embedded twin"
    else:
        metrics = NoMetrics(f"set {ENV_PROMETHEUS} to read a real cluster's telemetry")
        source = "none (PROMETHEUS_URL is not set)"
    monitor = Monitor(metrics=metrics, factory=factory, interval_s=interval,
                      thresholds=settings.alerts, cluster=cluster, catalog=settings.catalog)
    runtime = Runtime(settings=settings, url=url, engine=engine, factory=factory,
                      cluster=cluster, metrics=metrics, monitor=monitor, twin=twin,
                      metrics_source=source)
    if twin is not None and not prometheus_url and hours > 0:
        thread = threading.Thread(
            target=backfill_history, args=(settings, factory),
            kwargs={"hours": hours, "interval_s": interval}, name="gsc-backfill", daemon=True)
        thread.start()
        runtime.backfill = thread
        runtime.notes.append(f"history: simulating the last {hours:g} h in the background")
    if twin is not None:
        restored = _bind_held(twin, factory)
        if restored:
            runtime.notes.append(f"restored {restored} bound placements onto the twin")
    if twin is not None and metrics is twin:
        monitor.sample_once()  # the twin answers at once: pages show figures from the start
    if not background:
        return runtime
    if twin is not None and env.get(ENV_EMBEDDED_CONTROLLER, "1") != "0":
        # The embedded default runs the controller here, like the controller Deployment
        # does in a cluster (it competes for the same lease): placement, monitoring into
        # the store, autoscaling and feedback.
        from app.controller import ControllerLoop
        from core.controller import PlacementConfig

        loop = ControllerLoop(factory=factory, cluster=twin, clock=SystemClock(),
                              settings=settings, identity=f"console@{socket.gethostname()}",
                              placement=PlacementConfig(bind_timeout_s=0), monitor=monitor,
                              monitor_interval_s=interval)
        runtime.controller = loop
        runtime.controller_thread = threading.Thread(target=loop.run, name="gsc-controller",
                                                     daemon=True)
        runtime.controller_thread.start()
        runtime.notes.append("controller: running in this process")
    else:
        # No controller in this process: in embedded mode this console keeps the history
        # itself; next to a real cluster the controller process stores the samples, and
        # the console only keeps a live view.
        monitor.start(persist=twin is not None)
    return runtime
