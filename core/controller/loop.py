"""The controller loop: the leader lease, the injected clock, and a list of steps.

Each iteration renews the lease (or tries to take it), then runs every step
that is due, in order. A step is anything with a ``name``, ``leader_only``,
``due(now)`` and ``run(now=, leading=)`` (``Step``); placement, monitoring,
autoscaling and feedback are steps, and a new capability (rollout progression)
is one more module and one more entry in the list — never a new branch here.

Invariants:
- only the holder of the store's lease runs leader-only steps; a standby runs
  the others (a live view) and takes over once the lease has expired, requeueing
  the previous holder's claims in the same transaction;
- the lease TTL is longer than one iteration, and while a long step waits it
  calls ``heartbeat``, which renews the lease a few times per TTL and runs the
  other due steps; a leader that cannot renew stops at once (``LostLeadership``)
  before its lease could have been taken over;
- all time comes from the injected ``Clock``;
- iterations follow each other without the ``interval_s`` pause while a step says
  it has more work (placement after a full batch), so a deep queue drains at the
  speed of placement, not of the loop's cadence;
- a step that raises is logged and counted (``gsc_controller_step_failures_total``)
  and the steps after it still run: one failing job (a store error in the monitor's
  roll-up, say) never starves the others (rollout progression, placement). Only
  ``LostLeadership`` ends an iteration early.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from core.controller.metrics import ControllerMetrics
from core.ports import Clock, LeaseStore, QueueStats
from core.states import RequestState

log = logging.getLogger(__name__)

LEASE_NAME = "controller"


class LostLeadership(Exception):
    """The lease could not be renewed while a step was running."""


class Step(Protocol):
    """One of the controller's jobs, on its own cadence."""

    name: str
    leader_only: bool

    def due(self, now: float) -> bool: ...

    def run(self, *, now: float, leading: bool) -> None: ...


class LeadershipAware(Protocol):
    def on_leadership(self, leading: bool) -> None: ...


class Closable(Protocol):
    def close(self, *, timeout_s: float) -> None: ...


class ControllerLoop:
    def __init__(self, *, leases: LeaseStore, queue: QueueStats, clock: Clock, identity: str,
                 steps: Sequence[Step], metrics: ControllerMetrics | None = None,
                 lease_ttl_s: float = 15.0, interval_s: float = 2.0) -> None:
        self.leases = leases
        self.queue = queue
        self.clock = clock
        self.identity = identity
        self.steps = list(steps)
        self.metrics = metrics or ControllerMetrics()
        self.lease_ttl_s = lease_ttl_s
        self.interval_s = interval_s
        self.leading = False
        self.iterations = 0
        self.last_result: object = None
        self._renewed_at = float("-inf")
        self._running: str | None = None
        self._stop = threading.Event()

    def step(self) -> int:
        """One iteration: renew or take the lease, then run the due steps.

        Returns the number of requests bound in this iteration (0 on a standby)."""
        self.iterations += 1
        renewed_at = self.clock.now()
        grant = self.leases.acquire(name=LEASE_NAME, holder=self.identity, now=renewed_at,
                                    ttl_s=self.lease_ttl_s, renewing=self.leading)
        if grant is not None and grant.requeued:
            log.info("%s requeued %d requests claimed by %s", self.identity, grant.requeued,
                     grant.took_over_from)
        was = self.leading
        self.leading = grant is not None
        if self.leading:
            self._renewed_at = renewed_at
        if self.leading != was:
            log.info("%s %s the controller lease", self.identity,
                     "took" if self.leading else "lost")
            for step in self.steps:
                hook: Callable[[bool], None] | None = getattr(step, "on_leadership", None)
                if hook is not None:
                    hook(self.leading)
        self.metrics.leader.set(1 if self.leading else 0)
        bound = 0
        try:
            for step in self.steps:
                bound += self._run(step)
        except LostLeadership:
            # Stop at once: the claims' leases expire and the new leader retries them
            # (pods already created carry deterministic names and are judged by phase).
            self.leading = False
            self.metrics.leader.set(0)
            for step in self.steps:
                hook = getattr(step, "on_leadership", None)
                if hook is not None:
                    hook(False)
            log.warning("%s lost the controller lease during a step", self.identity)
            return 0
        if self.leading:
            counts = self.queue.queue_counts()
            for state in RequestState:
                self.metrics.queue_depth.labels(state=state.value).set(counts.get(state, 0))
        return bound

    def _run(self, step: Step, *, nested: bool = False) -> int:
        if step.leader_only and not self.leading:
            return 0
        now = self.clock.now()
        if not step.due(now) or self._running == step.name:
            return 0
        outer, self._running = self._running, step.name
        try:
            step.run(now=now, leading=self.leading)
        except LostLeadership:
            raise
        except Exception:  # this step retries when next due; the others run on
            log.exception("%s: controller step %r failed", self.identity, step.name)
            self.metrics.step_failures.labels(step=step.name).inc()
            return 0
        finally:
            self._running = outer
        bound = getattr(step, "bound_last_run", 0)
        return int(bound) if not nested else 0

    def heartbeat(self) -> None:
        """Called by a long step (placement waiting for pods): renew the lease a few times
        per TTL, and run the other steps that fall due meanwhile (monitoring)."""
        if self.clock.now() - self._renewed_at >= self.lease_ttl_s / 4:
            self._renew()
        for step in self.steps:
            if step.name != self._running and getattr(step, "runs_in_heartbeat", True):
                self._run(step, nested=True)

    def _renew(self) -> None:
        renewed_at = self.clock.now()
        grant = self.leases.acquire(name=LEASE_NAME, holder=self.identity, now=renewed_at,
                                    ttl_s=self.lease_ttl_s, renewing=True)
        if grant is None:
            raise LostLeadership(self.identity)
        self._renewed_at = renewed_at

    def run(self) -> None:
        """Iterate until ``stop``; an iteration that fails is logged and the next retries."""
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep the loop alive; the next iteration retries
                log.exception("controller iteration failed")
            if not self.more_work():
                self._stop.wait(self.interval_s)
        for step in self.steps:
            close: Callable[..., None] | None = getattr(step, "close", None)
            if close is not None:
                close(timeout_s=60)  # a run in progress finishes before the store closes
        if self.leading:
            self.leases.release(name=LEASE_NAME, holder=self.identity, now=self.clock.now())

    def more_work(self) -> bool:
        """A leader's step says the queue may hold more (a full batch was just claimed):
        the next iteration starts at once instead of after ``interval_s``."""
        return self.leading and any(getattr(step, "more_work", False) for step in self.steps)

    def stop(self) -> None:
        self._stop.set()
