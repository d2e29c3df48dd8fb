"""The controller's placement step: claim → decide → reserve → bind → wait → record.

Uses ports only (store, cluster, clock). For each claimed request it decides
over a fresh snapshot of the cluster, reserves the slice, creates the pod and
(optionally) waits until it runs. When binding fails or the pod does not come
up, it releases the slice, excludes that GPU and tries the next best one, up
to ``max_bind_attempts``; then it gives the request back to the queue (or
fails it once its attempts are spent) with the reason. Every decision is
recorded with its matrix and weight version.

The leader loop that runs this continuously, with monitoring, autoscaling and
feedback, is the rest of the controller (issue 5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from core.catalog import Catalog
from core.errors import SchedulerError
from core.manifest import DEFAULT_IMAGE, render_pod
from core.placement import FleetSnapshot, Scheduler
from core.ports import Clock, Cluster, PlacementStore, PodExistsError, PodPhase, QueuedItem


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    claim_batch: int = 50
    lease_seconds: float = 120.0
    max_bind_attempts: int = 3
    # 0 = do not wait for Running (the pod was accepted; the console's button uses this).
    bind_timeout_s: float = 180.0
    poll_s: float = 2.0
    retry_after_s: float = 30.0
    image: str = DEFAULT_IMAGE


@dataclass(frozen=True, slots=True)
class PlacementOutcome:
    request_id: str
    status: str  # bound, queued (will retry) or failed
    node: str | None
    gpu_index: int | None
    reason: str
    binds_tried: int


class PlacementWorker:
    def __init__(self, *, store: PlacementStore, cluster: Cluster, clock: Clock,
                 scheduler: Callable[[], Scheduler], catalog: Catalog, max_clients: int,
                 worker: str, config: PlacementConfig | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.clock = clock
        self.scheduler = scheduler
        self.catalog = catalog
        self.max_clients = max_clients
        self.worker = worker
        self.config = config or PlacementConfig()

    def run_once(self) -> list[PlacementOutcome]:
        """Claim a batch and place each request; returns what happened to each."""
        cfg = self.config
        items = self.store.claim(worker=self.worker, now=self.clock.now(),
                                 lease_seconds=cfg.lease_seconds, limit=cfg.claim_batch)
        if not items:
            return []
        snapshot = FleetSnapshot(self.cluster.nodes(), self.catalog,
                                 max_clients=self.max_clients)
        scheduler = self.scheduler()
        return [self._place(item, snapshot, scheduler) for item in items]

    def _place(self, item: QueuedItem, snapshot: FleetSnapshot,
               scheduler: Scheduler) -> PlacementOutcome:
        cfg = self.config
        self.store.mark_placing(pk=item.pk, worker=self.worker, now=self.clock.now())
        excluded: list[int] = []
        reason = "no attempt made"
        tried = 0
        for _ in range(cfg.max_bind_attempts):
            decision = scheduler.decide(item.request, snapshot, exclude_rows=excluded)
            self.store.record_decision(request_pk=item.pk, decision=decision,
                                       now=self.clock.now(), decided_by=self.worker)
            if decision.row is None:
                reason = decision.summary
                break
            row = decision.row
            sl = decision.mps_slice()
            snapshot.reserve(row, sl)
            pod = render_pod(request=item.request, node=decision.node or "",
                             gpu_index=decision.gpu_index or 0, mps_slice=sl,
                             workload_class=decision.workload_class,
                             weight_version=decision.weight_version, image=cfg.image,
                             gpu_memory_total_mib=int(snapshot.mem_total[row]))
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            tried += 1
            ok, reason = self._bind_and_wait(pod, namespace=namespace, name=name)
            if ok:
                self.store.finish(pk=item.pk, worker=self.worker, now=self.clock.now(),
                                  bound=True)
                return PlacementOutcome(item.request_id, "bound", decision.node,
                                        decision.gpu_index, reason, tried)
            snapshot.unreserve(sl.owner)
            excluded.append(row)
            reason = f"{snapshot.key(row)}: {reason}"
        status = self.store.release(pk=item.pk, worker=self.worker, now=self.clock.now(),
                                    reason=reason, retry_after=cfg.retry_after_s)
        return PlacementOutcome(item.request_id, status, None, None, reason, tried)

    def _bind_and_wait(self, pod: dict, *, namespace: str, name: str) -> tuple[bool, str]:
        """Create the pod and wait for it to run. (ok, why) — never raises for cluster errors."""
        cfg = self.config
        try:
            self.cluster.bind(pod)
        except PodExistsError:
            pass  # our own earlier attempt (same deterministic name): judge it by its phase
        except SchedulerError as exc:
            return False, f"bind failed: {exc}"
        if cfg.bind_timeout_s <= 0:
            return True, "pod accepted"
        deadline = self.clock.now() + cfg.bind_timeout_s
        phase = PodPhase.UNKNOWN.value
        while True:
            try:
                phase = self.cluster.pod_phase(namespace, name)
            except SchedulerError as exc:
                phase = f"unknown ({exc})"
            if phase == PodPhase.RUNNING.value:
                return True, "pod running"
            if phase == PodPhase.FAILED.value or self.clock.now() >= deadline:
                break
            self.clock.sleep(cfg.poll_s)
        self._delete_quietly(namespace, name)
        if phase == PodPhase.FAILED.value:
            return False, "pod failed to start"
        return False, f"pod not running after {cfg.bind_timeout_s:.0f} s (last phase {phase})"

    def _delete_quietly(self, namespace: str, name: str) -> None:
        # The pod may be gone or the API down; the claim's lease expiry requeues either way.
        with contextlib.suppress(SchedulerError):
            self.cluster.delete_pod(namespace, name)
