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
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from core.adapters.settings_source import load_settings
from core.controller import PlacementConfig, PlacementWorker
from core.placement import Scheduler
from core.ports import Clock, Cluster
from core.settings import Settings
from db import repo
from db.placement_store import SqlPlacementStore

log = logging.getLogger(__name__)

LEASE_NAME = "controller"


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
        self._stop = threading.Event()

        def active_scheduler() -> Scheduler:
            with factory() as s:
                active = repo.active_weights(s)
            weights = active.weights if active else settings.placement.weights
            return Scheduler(catalog=settings.catalog, classes=settings.classes,
                             weights=weights, weight_version=active.version if active else None,
                             max_utilization=settings.placement.max_utilization,
                             max_clients=settings.placement.max_mps_clients_per_gpu,
                             memory_headroom=settings.placement.memory_headroom)

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
        if not self.leading:
            return 0
        return sum(1 for o in self.worker.run_once() if o.status == "bound")

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
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    try:
        loop.run()
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
