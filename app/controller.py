"""The controller process: leader election on the store's lease, then the placement step.

Run ``python -m app.controller`` (the controller Deployment does; several
replicas may run, exactly one leads). The console runs the same loop in a
background thread in embedded mode. It never calls Streamlit.

Each iteration renews (or tries to take) the lease; the leader claims and
places queued requests through ``core.controller.PlacementWorker``; standbys
only poll the lease, and take over once the leader's lease expires. The lease
TTL is longer than one iteration, and a leader that fails to renew stops
placing before its lease could have been taken over.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.orm import Session, sessionmaker

from core.adapters.settings_source import load_settings
from core.controller import PlacementConfig, PlacementWorker
from core.placement import Scheduler
from core.ports import Clock, Cluster
from core.settings import Settings
from core.sim.exporter import serve_registry
from db import repo
from db.models import REQUEST_STATES
from db.placement_store import SqlPlacementStore

log = logging.getLogger(__name__)

LEASE_NAME = "controller"


class LostLeadership(Exception):
    """The lease could not be renewed while a placement pass was waiting."""


class ControllerMetrics:
    """The controller's own metrics (SPEC §3.5), in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.placements = Counter("gsc_placements_total", "Placement outcomes",
                                  ["outcome"], registry=self.registry)
        for outcome in ("bound", "queued", "failed"):
            self.placements.labels(outcome=outcome)
        self.placement_seconds = Histogram(
            "gsc_placement_seconds", "Wall time to place one request (decide, reserve, bind, "
            "wait)", buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 300),
            registry=self.registry)
        self.queue_depth = Gauge("gsc_queue_depth", "Placement requests by state", ["state"],
                                 registry=self.registry)
        self.leader = Gauge("gsc_controller_leader", "1 while this controller leads",
                            registry=self.registry)
        self.autoscaling_actions = Counter("gsc_autoscaling_actions_total",
                                           "Autoscaling actions taken", ["action"],
                                           registry=self.registry)


class ControllerLoop:
    def __init__(self, *, factory: sessionmaker[Session], cluster: Cluster, clock: Clock,
                 settings: Settings, identity: str, lease_ttl_s: float = 15.0,
                 interval_s: float = 2.0, placement: PlacementConfig | None = None) -> None:
        self.factory = factory
        self.clock = clock
        self.identity = identity
        self.lease_ttl_s = lease_ttl_s
        self.interval_s = interval_s
        self.leading = False
        self.iterations = 0
        self.metrics = ControllerMetrics()
        self._stop = threading.Event()

        def active_scheduler() -> Scheduler:
            with factory() as s:
                active = repo.active_weights(s)
            if active is None:
                return Scheduler.from_settings(settings)
            return Scheduler.from_settings(settings, weights=active.weights,
                                           weight_version=active.version)

        self.worker = PlacementWorker(
            store=SqlPlacementStore(factory), cluster=cluster, clock=clock,
            scheduler=active_scheduler,
            catalog=settings.catalog, max_clients=settings.placement.max_mps_clients_per_gpu,
            worker=identity, config=placement)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def step(self) -> int:
        """One iteration: renew or take the lease; if leading, run one placement pass."""
        self.iterations += 1
        with self.factory.begin() as s:
            lease = repo.acquire_lease(s, name=LEASE_NAME, holder=self.identity,
                                       now=self._now(), ttl_seconds=self.lease_ttl_s)
        was = self.leading
        self.leading = lease is not None
        if self.leading != was:
            log.info("%s %s the controller lease", self.identity,
                     "took" if self.leading else "lost")
        self.metrics.leader.set(1 if self.leading else 0)
        if not self.leading:
            return 0
        started = time.perf_counter()
        try:
            outcomes = self.worker.run_once(heartbeat=self._renew)
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
            counts = repo.queue_counts(s)
        for state in REQUEST_STATES:
            self.metrics.queue_depth.labels(state=state).set(counts.get(state, 0))
        return sum(1 for o in outcomes if o.status == "bound")

    def _renew(self) -> None:
        with self.factory.begin() as s:
            lease = repo.acquire_lease(s, name=LEASE_NAME, holder=self.identity,
                                       now=self._now(), ttl_seconds=self.lease_ttl_s)
        if lease is None:
            raise LostLeadership(self.identity)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep the loop alive; the next iteration retries
                log.exception("controller iteration failed")
            self._stop.wait(self.interval_s)
        if self.leading:
            with self.factory.begin() as s:
                repo.release_lease(s, name=LEASE_NAME, holder=self.identity, now=self._now())

    def stop(self) -> None:
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU Scheduler Console controller")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--lease-ttl", type=float, default=15.0)
    parser.add_argument("--metrics-port", type=int, default=9102,
                        help="serve the controller's /metrics here (0: any free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from app.runtime import build_runtime
    from core.clock import SystemClock
    from db.engine import database_url

    settings = load_settings()
    runtime = build_runtime(settings, database_url())
    identity = os.environ.get("HOSTNAME") or socket.gethostname()
    loop = ControllerLoop(factory=runtime.factory, cluster=runtime.cluster, clock=SystemClock(),
                          settings=settings, identity=f"controller@{identity}",
                          lease_ttl_s=args.lease_ttl, interval_s=args.interval)
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
