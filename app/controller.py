"""The controller: leader election on the store's lease, then placement, monitoring,
autoscaling and feedback.

Run ``python -m app.controller`` or ``gsc-controller`` (the controller
Deployment does; several replicas may run, exactly one leads). The console
runs the same loop in a background thread in embedded mode. It never calls
Streamlit.

Each iteration renews (or tries to take) the lease. The leader, on its own
cadences, samples the fleet's telemetry into the store (monitoring and alert
evaluation, every ``monitor_interval_s``), runs the autoscaler on that sample,
runs the feedback step, and claims and places queued requests through
``core.controller.PlacementWorker``. Standbys only poll the lease (and keep a
live, unstored view of the telemetry when they have a monitor), and take over
once the leader's lease expires. The lease TTL is longer than one iteration,
and a leader that fails to renew stops before its lease could have been taken
over. All time comes from the injected clock.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.orm import Session, sessionmaker

from app.feedback_runner import FeedbackRunner
from app.runtime import Monitor
from core.adapters.settings_source import load_settings
from core.autoscale import Action, Autoscaler, Recommendation, fleet_views, least_valuable
from core.autoscale import scale_up_requests as more_like
from core.controller import PlacementConfig, PlacementWorker
from core.errors import SchedulerError
from core.model import PlacementRequest, Priority
from core.placement import Scheduler
from core.ports import Clock, Cluster
from core.settings import Settings
from core.sim.exporter import serve_registry
from core.telemetry import FleetTelemetry
from db import autoscaling, flags, leases, queue, versions
from db.models import REQUEST_STATES
from db.placement_store import SqlPlacementStore

log = logging.getLogger(__name__)

LEASE_NAME = "controller"
PAUSED_FLAG = "autoscaling.paused"
STATUS_FLAG = "autoscaling.status"


class LostLeadership(Exception):
    """The lease could not be renewed while a placement pass was waiting."""


class ControllerMetrics:
    """The controller's own metrics (SPEC §3.5), in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.placements = Counter("gsc_placements_total", "Placement outcomes",
                                  ["outcome"], registry=self.registry)
        for outcome in ("bound", "queued", "failed", "lost"):
            self.placements.labels(outcome=outcome)
        self.placement_seconds = Histogram(
            "gsc_placement_seconds", "Wall time to place one request (decide, reserve, bind, "
            "wait)", buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 300),
            registry=self.registry)
        self.decision_seconds = Histogram(
            "gsc_decision_seconds", "Placement decision latency: classify, filter, score, "
            "choose (no I/O)", buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01,
                                        0.05, 0.1), registry=self.registry)
        self.queue_depth = Gauge("gsc_queue_depth", "Placement requests by state", ["state"],
                                 registry=self.registry)
        self.leader = Gauge("gsc_controller_leader", "1 while this controller leads",
                            registry=self.registry)
        self.autoscaling_actions = Counter("gsc_autoscaling_actions_total",
                                           "Autoscaling actions taken", ["action"],
                                           registry=self.registry)
        for action in ("up", "down"):
            self.autoscaling_actions.labels(action=action)
        self.monitor_samples = Counter("gsc_monitor_samples_total",
                                       "Telemetry samples taken, by outcome", ["outcome"],
                                       registry=self.registry)
        for outcome in ("stored", "unavailable"):
            self.monitor_samples.labels(outcome=outcome)
        self.autoscaling_paused = Gauge("gsc_autoscaling_paused",
                                        "1 while an operator has paused autoscaling",
                                        registry=self.registry)


class AutoscaleStep:
    """Runs the autoscaler on one telemetry sample and carries out what it decides.

    A scale-up enqueues placement requests like the deployment's newest one
    (source ``autoscaler``); a scale-down deletes the least valuable replicas
    and marks their requests removed. Every action is stored with its inputs;
    so is the start of every stabilization window. The latest recommendations
    are published in the store (flag ``autoscaling.status``) for consoles in
    other processes. While an operator has paused autoscaling (flag
    ``autoscaling.paused``) it recommends but does not act, and windows restart
    after a resume.
    """

    def __init__(self, *, factory: sessionmaker[Session], cluster: Cluster,
                 settings: Settings, identity: str, metrics: ControllerMetrics) -> None:
        self.factory = factory
        self.cluster = cluster
        self.settings = settings
        self.config = settings.autoscaling
        self.identity = identity
        self.metrics = metrics
        self.autoscaler = Autoscaler(self.config.policy)
        self._pending: dict[str, Action] = {}

    def run(self, telemetry: FleetTelemetry, *, now: float) -> list[Recommendation]:
        at = datetime.fromtimestamp(now, UTC)
        pods = self.cluster.replica_pods()
        with self.factory() as s:
            paused_flag = flags.get_flag(s, PAUSED_FLAG)
            in_flight = queue.in_flight_by_deployment(s)
        paused = bool(paused_flag and paused_flag.value.get("paused"))
        self.metrics.autoscaling_paused.set(1 if paused else 0)
        if paused:
            self.autoscaler.reset()
            self._pending.clear()
        views = fleet_views(telemetry, pods, self.settings.catalog, in_flight=in_flight)
        recs: list[Recommendation] = []
        status: list[dict[str, object]] = []
        for view in views:
            sig = view.signals
            policy = self.config.policy.for_deployment(sig.deployment, self.config.limits)
            rec = self.autoscaler.observe(sig, now=now, policy=policy)
            recs.append(rec)
            acted = False
            if paused:
                self.autoscaler.reset()
            elif rec.action is Action.UP:
                acted = self._scale_up(rec, at=at)
            elif rec.action is Action.DOWN:
                acted = self._scale_down(rec, view.replicas, at=at)
            if not acted and not paused and rec.pending is not Action.HOLD \
                    and self._pending.get(rec.deployment) is not rec.pending:
                self._record(rec, action="hold", after=rec.replicas, at=at,
                             reason=f"{rec.pending.value} recommended; {rec.reason}")
            self._pending[rec.deployment] = rec.pending if not acted else Action.HOLD
            window = (policy.up_stabilization_s if rec.pending is Action.UP
                      else policy.down_stabilization_s)
            status.append({
                "deployment": rec.deployment, "replicas": rec.replicas,
                "running": sum(1 for r in view.replicas if r.running),
                "in_flight": view.in_flight, "queue": sig.queue_waiting,
                "tops_per_w": round(sig.tops_per_w, 4),
                "cost_per_inference": _finite(sig.cost_per_inference),
                "utilization": round(sig.utilization, 4),
                "action": rec.action.value, "target": rec.target, "reason": rec.reason,
                "pending": rec.pending.value, "pending_since": rec.pending_since,
                "fires_in_s": rec.fires_in_s,
                "window_s": window if rec.pending is not Action.HOLD else None,
                "min_replicas": policy.min_replicas, "max_replicas": policy.max_replicas,
            })
        with self.factory.begin() as s:
            flags.set_flag(s, key=STATUS_FLAG, actor=self.identity, now=at,
                          value={"at": now, "paused": paused, "deployments": status})
        return recs

    def _record(self, rec: Recommendation, *, action: str, after: int, at: datetime,
                reason: str, extra: dict[str, object] | None = None) -> None:
        inputs = {k: _finite(v) for k, v in rec.inputs.items()}
        inputs.update(extra or {})
        with self.factory.begin() as s:
            autoscaling.record_autoscaling(s, deployment=rec.deployment, action=action,
                                    replicas_before=rec.replicas, replicas_after=after,
                                    inputs=inputs, reason=reason, now=at)

    def _template(self, deployment: str) -> PlacementRequest | None:
        namespace, model = deployment.split("/", 1)
        with self.factory() as s:
            latest = queue.latest_request_for(s, namespace=namespace, model=model)
        if latest is not None:
            return latest
        pods = [p for p in self.cluster.replica_pods() if p.deployment == deployment]
        if not pods:
            return None
        memory_gb = max(p.memory_mib for p in pods) / 1024
        return PlacementRequest(model_name=model, model_memory_gb=memory_gb,
                                priority=Priority[self.config.default_priority],
                                latency_sla_ms=self.config.default_latency_sla_ms,
                                namespace=namespace)

    def _scale_up(self, rec: Recommendation, *, at: datetime) -> bool:
        template = self._template(rec.deployment)
        if template is None:
            log.warning("cannot scale up %s: no request or pod to copy", rec.deployment)
            return False
        count = rec.target - rec.replicas
        tag = f"{int(at.timestamp())}"
        requests = more_like(template, count=count, tag=tag)
        with self.factory.begin() as s:
            queue.enqueue_many(s, requests, now=at, source="autoscaler")
            autoscaling.record_autoscaling(
                s, deployment=rec.deployment, action="up", replicas_before=rec.replicas,
                replicas_after=rec.target, reason=rec.reason, now=at,
                inputs={**{k: _finite(v) for k, v in rec.inputs.items()},
                        "requests": [r.request_id for r in requests]})
        self.metrics.autoscaling_actions.labels(action="up").inc()
        log.info("autoscaler: %s up %d → %d (%s)", rec.deployment, rec.replicas, rec.target,
                 rec.reason)
        return True

    def _scale_down(self, rec: Recommendation, replicas: tuple[object, ...], *,
                    at: datetime) -> bool:
        victims = least_valuable(replicas, rec.replicas - rec.target)  # type: ignore[arg-type]
        removed: list[str] = []
        for r in victims:
            try:
                self.cluster.delete_pod(r.namespace, r.name)
            except SchedulerError as exc:
                log.warning("autoscaler could not delete %s/%s: %s", r.namespace, r.name, exc)
                continue
            removed.append(r.name)
        if not removed:
            return False
        owners = [r.owner for r in victims if r.name in removed]
        after = rec.replicas - len(removed)
        with self.factory.begin() as s:
            queue.mark_removed(s, request_ids=owners, reason=f"scaled down: {rec.reason}",
                              now=at)
            autoscaling.record_autoscaling(
                s, deployment=rec.deployment, action="down", replicas_before=rec.replicas,
                replicas_after=after, reason=rec.reason, now=at,
                inputs={**{k: _finite(v) for k, v in rec.inputs.items()}, "removed": removed,
                        "removed_requests": owners})
        self.metrics.autoscaling_actions.labels(action="down").inc()
        log.info("autoscaler: %s down %d → %d (%s)", rec.deployment, rec.replicas, after,
                 rec.reason)
        return True


def _finite(value: object) -> object:
    """JSON has no infinity: an infinite cost per inference (nothing served) is stored as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ControllerLoop:
    def __init__(self, *, factory: sessionmaker[Session], cluster: Cluster, clock: Clock,
                 settings: Settings, identity: str, lease_ttl_s: float = 15.0,
                 interval_s: float = 2.0, placement: PlacementConfig | None = None,
                 monitor: Monitor | None = None, monitor_interval_s: float = 30.0,
                 autoscale: bool = True, feedback: bool = True) -> None:
        self.factory = factory
        self.cluster = cluster
        self.clock = clock
        self.identity = identity
        self.lease_ttl_s = lease_ttl_s
        self.interval_s = interval_s
        self.leading = False
        self.iterations = 0
        self.metrics = ControllerMetrics()
        self.monitor = monitor
        self.monitor_interval_s = monitor_interval_s
        self.autoscale = (AutoscaleStep(factory=factory, cluster=cluster, settings=settings,
                                        identity=identity, metrics=self.metrics)
                          if autoscale and monitor is not None else None)
        self.feedback = (FeedbackRunner(factory=factory, cluster=cluster, settings=settings,
                                        identity=identity)
                         if feedback and monitor is not None else None)
        self._next_sample = clock.now()
        self._renewed_at = float("-inf")
        self._stop = threading.Event()

        def active_scheduler() -> Scheduler:
            with factory() as s:
                active = versions.active_weights(s)
            if active is None:
                return Scheduler.from_settings(settings)
            return Scheduler.from_settings(settings, weights=active.weights,
                                           weight_version=active.version)

        self.worker = PlacementWorker(
            store=SqlPlacementStore(factory), cluster=cluster, clock=clock,
            scheduler=active_scheduler,
            catalog=settings.catalog, max_clients=settings.placement.max_mps_clients_per_gpu,
            worker=identity, config=placement, timer=time.perf_counter,
            on_decision=self.metrics.decision_seconds.observe)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def step(self) -> int:
        """One iteration: renew or take the lease; if leading, run one placement pass."""
        self.iterations += 1
        renewed_at = self.clock.now()
        with self.factory.begin() as s:
            # Whoever held the lease last, expired or not (a leader renewing needs no look).
            before = None if self.leading else leases.current_lease(
                s, name=LEASE_NAME, now=datetime.min.replace(tzinfo=UTC))
            lease = leases.acquire_lease(s, name=LEASE_NAME, holder=self.identity,
                                       now=self._now(), ttl_seconds=self.lease_ttl_s)
            if lease is not None and before is not None and before.holder != self.identity:
                # Taken over from a leader that stopped: its claims are orphans (only the
                # leader places), so they go back to the queue now rather than when their
                # claim leases expire. Pods it already created are adopted, not duplicated.
                orphans = queue.requeue_claims_of(s, worker=before.holder, now=self._now())
                if orphans:
                    log.info("%s requeued %d requests claimed by %s", self.identity, orphans,
                             before.holder)
        was = self.leading
        self.leading = lease is not None
        if self.leading:
            self._renewed_at = renewed_at
        elif self.feedback is not None:
            self.feedback.lost_leadership()
        if self.leading != was:
            log.info("%s %s the controller lease", self.identity,
                     "took" if self.leading else "lost")
        self.metrics.leader.set(1 if self.leading else 0)
        if not self.leading:
            self._standby_sample()
            return 0
        self.periodic()
        started = time.perf_counter()
        try:
            outcomes = self.worker.run_once(heartbeat=self._heartbeat)
        except LostLeadership:
            # Stop at once: the claims' leases expire and the new leader retries them
            # (pods already created carry deterministic names and are judged by phase).
            self.leading = False
            self.metrics.leader.set(0)
            log.warning("%s lost the controller lease during a placement pass", self.identity)
            return 0
        if outcomes:
            per_request = (time.perf_counter() - started) / len(outcomes)
            for outcome in outcomes:
                self.metrics.placements.labels(outcome=outcome.status).inc()
                self.metrics.placement_seconds.observe(per_request)
        with self.factory() as s:
            counts = queue.queue_counts(s)
        for state in REQUEST_STATES:
            self.metrics.queue_depth.labels(state=state).set(counts.get(state, 0))
        return sum(1 for o in outcomes if o.status == "bound")

    def periodic(self) -> None:
        """The leader's timed work: when a sample is due, store it and autoscale on it."""
        if self.monitor is None or self.clock.now() < self._next_sample:
            return
        now = self.clock.now()
        self._next_sample = now + self.monitor_interval_s
        state = self.monitor.sample_once()
        if state.error is not None or state.latest is None:
            self.metrics.monitor_samples.labels(outcome="unavailable").inc()
            return
        self.metrics.monitor_samples.labels(outcome="stored").inc()
        if self.autoscale is not None:
            try:
                self.autoscale.run(state.latest, now=now)
            except SchedulerError as exc:  # the cluster is unreachable: try at the next sample
                log.warning("autoscaling skipped: %s", exc)
        if self.feedback is not None:
            self.feedback.maybe_start(state.latest, now=now)

    def _standby_sample(self) -> None:
        """A standby keeps its live view fresh without storing (the leader stores)."""
        if self.monitor is None or self.clock.now() < self._next_sample:
            return
        self._next_sample = self.clock.now() + self.monitor_interval_s
        self.monitor.sample_once(persist=False)

    def _heartbeat(self) -> None:
        """Called during a placement pass (after each bind, at each poll while waiting for
        pods): renew the lease a few times per TTL, and keep sampling."""
        if self.clock.now() - self._renewed_at >= self.lease_ttl_s / 4:
            self._renew()
        self.periodic()

    def _renew(self) -> None:
        renewed_at = self.clock.now()
        with self.factory.begin() as s:
            lease = leases.acquire_lease(s, name=LEASE_NAME, holder=self.identity,
                                       now=self._now(), ttl_seconds=self.lease_ttl_s)
        if lease is None:
            raise LostLeadership(self.identity)
        self._renewed_at = renewed_at

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep the loop alive; the next iteration retries
                log.exception("controller iteration failed")
            self._stop.wait(self.interval_s)
        if self.feedback is not None:
            self.feedback.join(timeout=60)  # a run in progress finishes before the store closes
        if self.leading:
            with self.factory.begin() as s:
                leases.release_lease(s, name=LEASE_NAME, holder=self.identity, now=self._now())

    def stop(self) -> None:
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU Scheduler Console controller")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--lease-ttl", type=float, default=15.0,
                        help="seconds a leader's lease lasts without renewal")
    parser.add_argument("--claim-lease", type=float, default=120.0,
                        help="seconds a claimed request stays with a controller that stopped "
                             "before it is retried")
    parser.add_argument("--metrics-port", type=int, default=9102,
                        help="serve the controller's /metrics here (0: any free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from app.runtime import build_runtime
    from core.clock import SystemClock
    from db.engine import database_url

    settings = load_settings()
    runtime = build_runtime(settings, database_url(), background=False)
    identity = os.environ.get("HOSTNAME") or socket.gethostname()
    loop = ControllerLoop(factory=runtime.factory, cluster=runtime.cluster, clock=SystemClock(),
                          settings=settings, identity=f"controller@{identity}",
                          lease_ttl_s=args.lease_ttl, interval_s=args.interval,
                          monitor=runtime.monitor, monitor_interval_s=runtime.monitor.interval_s,
                          placement=PlacementConfig(lease_seconds=args.claim_lease))
    exporter = serve_registry(loop.metrics.registry, host="0.0.0.0", port=args.metrics_port)
    log.info("controller metrics at http://%s:%d/metrics", socket.gethostname(), exporter.port)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    try:
        loop.run()
    finally:
        exporter.stop()
        runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
