"""The controller's placement step: claim → decide → reserve → bind → wait → record.

Uses ports only (store, cluster, clock). For each claimed request it decides
over a fresh snapshot of the cluster, reserves the slice, creates the pod and
(optionally) waits until it runs. When binding fails or the pod does not come
up, it releases the slice, excludes that GPU and tries the next best one, up
to ``max_bind_attempts``; then it gives the request back to the queue (or
fails it once its attempts are spent) with the reason. Every decision is
recorded with its matrix and weight version.

``PlacementStep`` runs one pass per loop iteration on the leader
(``core.controller.loop``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.catalog import Catalog
from core.controller.metrics import ControllerMetrics
from core.errors import SchedulerError
from core.manifest import DEFAULT_IMAGE, render_pod
from core.model import MpsSlice, WorkloadClass
from core.placement import FleetSnapshot, Scheduler
from core.ports import (
    ClaimLost,
    Clock,
    Cluster,
    GpuCapacity,
    HeldSlice,
    PlacementStore,
    PodExistsError,
    PodPhase,
    QueuedItem,
    ReservationConflict,
)
from core.states import PlacementStatus


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    claim_batch: int = 50
    lease_seconds: float = 120.0
    max_bind_attempts: int = 3
    # 0 = do not wait for Running (the pod was accepted; the console's button uses this).
    bind_timeout_s: float = 180.0
    poll_s: float = 2.0
    retry_after_s: float = 30.0
    # GPUs a request may lose to other placers' reservations in one attempt before it
    # waits for the next pass.
    max_reservation_conflicts: int = 8
    image: str = DEFAULT_IMAGE


@dataclass(frozen=True, slots=True)
class PlacementOutcome:
    request_id: str
    status: PlacementStatus
    node: str | None
    gpu_index: int | None
    reason: str
    binds_tried: int


@dataclass(slots=True)
class _Attempt:
    """One claimed request's progress through the rounds of a pass."""

    item: QueuedItem
    excluded: list[int] = field(default_factory=list)
    reason: str = "no attempt made"
    tried: int = 0
    gave_up: bool = False
    row: int = -1
    owner: str = ""
    node: str | None = None
    gpu_index: int | None = None
    namespace: str = ""
    name: str = ""
    running: bool = False
    outcome: PlacementOutcome | None = None


class PlacementWorker:
    def __init__(self, *, store: PlacementStore, cluster: Cluster, clock: Clock,
                 scheduler: Callable[[], Scheduler], catalog: Catalog, max_clients: int,
                 worker: str, config: PlacementConfig | None = None,
                 timer: Callable[[], float] | None = None,
                 on_decision: Callable[[float], None] | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.clock = clock
        self.scheduler = scheduler
        self.catalog = catalog
        self.max_clients = max_clients
        self.worker = worker
        self.config = config or PlacementConfig()
        # Decision latency (classify → filter → score → choose) for the controller's metrics;
        # the timer is injected so that the core reads no clock of its own.
        self.timer = timer
        self.on_decision = on_decision
        self._snapshot_at = 0.0

    def run_once(self, *, heartbeat: Callable[[], None] | None = None
                 ) -> list[PlacementOutcome]:
        """Claim a batch and place it; returns what happened to each request.

        Each round decides and binds every request still unplaced, then waits for
        all of their pods together (calling ``heartbeat`` at every poll, e.g. to
        renew the leader lease; it may raise to abandon the pass). Requests whose
        pod failed or did not come up go to the next round, without that GPU.
        """
        cfg = self.config
        items = self.store.claim(worker=self.worker, now=self.clock.now(),
                                 lease_seconds=cfg.lease_seconds, limit=cfg.claim_batch)
        if not items:
            return []
        beat = heartbeat or (lambda: None)
        beat()
        self._snapshot_at = self.clock.now()
        try:
            nodes = self.cluster.nodes()
        except SchedulerError as exc:
            # The cluster cannot be read: no attempt was made. Give every claim back at
            # once (not after the claim lease) and refund its attempt.
            return self._give_back(items, reason=f"the cluster did not answer: {exc}")
        snapshot = FleetSnapshot(nodes, self.catalog, max_clients=self.max_clients)
        beat()
        scheduler = self.scheduler()
        states = [_Attempt(item) for item in items]
        done: list[PlacementOutcome] = []
        for state in states:
            try:
                self.store.mark_placing(pk=state.item.pk, worker=self.worker,
                                        now=self.clock.now())
            except ClaimLost as exc:
                self._lost(state, exc, done)
            beat()
        pending = [st for st in states if st.outcome is None]
        for _ in range(cfg.max_bind_attempts):
            waiting = []
            for st in pending:
                if self._bind(st, snapshot, scheduler, done):
                    waiting.append(st)
                if heartbeat is not None:
                    heartbeat()
            if not waiting:
                pending = [st for st in pending if st.outcome is None and not st.gave_up]
                if not pending:
                    break
                continue
            self._wait(waiting, heartbeat=heartbeat)
            for st in waiting:
                if st.running:
                    try:
                        self.store.finish(pk=st.item.pk, worker=self.worker,
                                          now=self.clock.now(), bound=True)
                    except ClaimLost as exc:
                        self._lost(st, exc, done)
                        continue
                    st.outcome = PlacementOutcome(st.item.request_id, PlacementStatus.BOUND,
                                                  st.node, st.gpu_index, st.reason, st.tried)
                    done.append(st.outcome)
                else:
                    snapshot.unreserve(st.owner)
                    self.store.release_reservation(owner=st.owner)
                    st.excluded.append(st.row)
                    st.reason = f"{snapshot.key(st.row)}: {st.reason}"
            pending = [st for st in pending if st.outcome is None and not st.gave_up]
            if not pending:
                break
        for st in states:
            if st.outcome is None:
                if st.owner:
                    self.store.release_reservation(owner=st.owner)
                try:
                    status = self.store.release(pk=st.item.pk, worker=self.worker,
                                                now=self.clock.now(), reason=st.reason,
                                                retry_after=cfg.retry_after_s)
                except ClaimLost as exc:
                    self._lost(st, exc, done)
                    continue
                st.outcome = PlacementOutcome(st.item.request_id, PlacementStatus(status), None,
                                              None, st.reason, st.tried)
                done.append(st.outcome)
        order = {st.item.request_id: i for i, st in enumerate(states)}
        return sorted(done, key=lambda o: order[o.request_id])

    def _bind(self, st: _Attempt, snapshot: FleetSnapshot, scheduler: Scheduler,
              done: list[PlacementOutcome]) -> bool:
        """Decide, reserve and create the pod. True when there is a pod to wait for."""
        cfg = self.config
        if self._adopt(st, snapshot):
            return True
        lost_races: list[str] = []
        reserved = False
        while True:
            started = self.timer() if self.timer is not None else 0.0
            decision = scheduler.decide(st.item.request, snapshot, exclude_rows=st.excluded)
            if self.timer is not None and self.on_decision is not None:
                self.on_decision(self.timer() - started)
            if decision.row is None or len(lost_races) >= cfg.max_reservation_conflicts:
                break
            try:
                self._reserve_in_store(snapshot, decision.row, decision.mps_slice())
            except ReservationConflict as exc:
                # Another placer took this GPU's space since our snapshot: that GPU is out
                # for this request; decide again without it (not a bind attempt).
                lost_races.append(str(exc))
                st.excluded.append(decision.row)
                continue
            reserved = True
            break
        self.store.record_decision(request_pk=st.item.pk, decision=decision,
                                   now=self.clock.now(), decided_by=self.worker)
        if not reserved:
            races = (f" (other placers took {len(lost_races)} GPU(s) first; last: "
                     f"{lost_races[-1]})") if lost_races else ""
            st.reason = (decision.summary if decision.row is None
                         else "every GPU tried was taken by another placer") + races
            st.gave_up = True
            return False
        row = decision.row
        sl = decision.mps_slice()
        snapshot.reserve(row, sl)
        pod = render_pod(request=st.item.request, node=decision.node or "",
                         gpu_index=decision.gpu_index or 0, mps_slice=sl,
                         workload_class=decision.workload_class,
                         weight_version=decision.weight_version, image=cfg.image,
                         gpu_memory_total_mib=int(snapshot.mem_total[row]))
        st.row, st.owner, st.node, st.gpu_index = row, sl.owner, decision.node, decision.gpu_index
        st.namespace, st.name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        st.tried += 1
        st.running = False
        try:
            self.cluster.bind(pod)
        except PodExistsError:
            pass  # our own earlier attempt (same deterministic name): judge it by its phase
        except SchedulerError as exc:
            snapshot.unreserve(sl.owner)
            self.store.release_reservation(owner=sl.owner)
            st.excluded.append(row)
            st.reason = f"{snapshot.key(row)}: bind failed: {exc}"
            return False
        if cfg.bind_timeout_s <= 0:
            st.running, st.reason = True, "pod accepted"
        return True

    def _give_back(self, items: Sequence[QueuedItem], *, reason: str
                   ) -> list[PlacementOutcome]:
        done: list[PlacementOutcome] = []
        for item in items:
            try:
                self.store.release(pk=item.pk, worker=self.worker, now=self.clock.now(),
                                   reason=reason, retry_after=self.config.retry_after_s,
                                   refund=True)
            except ClaimLost as exc:
                done.append(PlacementOutcome(item.request_id, PlacementStatus.LOST, None, None,
                                             f"claim lost: {exc}", 0))
                continue
            done.append(PlacementOutcome(item.request_id, PlacementStatus.QUEUED, None, None,
                                         reason, 0))
        return done

    def _reserve_in_store(self, snapshot: FleetSnapshot, row: int, sl: MpsSlice) -> None:
        """Reserve ``sl`` on ``row``'s GPU in the store, checked against what the store and
        this snapshot know is held there; ``ReservationConflict`` when it no longer fits."""
        observed = tuple(HeldSlice(owner=o.owner, thread_pct=o.thread_pct,
                                   memory_mib=o.memory_mib) for o in snapshot.slices[row])
        capacity = GpuCapacity(
            memory_mib=int(snapshot.cols.mem_free[row]) + sum(h.memory_mib for h in observed),
            replicas=snapshot.replicas_of(row))
        self.store.reserve(owner=sl.owner, node=snapshot.node_of(row),
                           gpu_index=int(snapshot.gpu_index[row]), thread_pct=sl.thread_pct,
                           memory_mib=sl.memory_mib, capacity=capacity, observed=observed,
                           observed_at=self._snapshot_at, worker=self.worker,
                           now=self.clock.now())

    def _lost(self, st: _Attempt, exc: ClaimLost, done: list[PlacementOutcome]) -> None:
        """Another worker holds this request now: leave it (and any pod made) to them."""
        st.outcome = PlacementOutcome(st.item.request_id, PlacementStatus.LOST, st.node,
                                      st.gpu_index, f"claim lost: {exc}", st.tried)
        done.append(st.outcome)

    def _adopt(self, st: _Attempt, snapshot: FleetSnapshot) -> bool:
        """Take over the pod an earlier attempt created (e.g. by a leader that died after
        binding): the cluster already holds a slice for this request. It is judged by its
        phase like a fresh bind; deciding again could only bind a second pod elsewhere."""
        owner = st.item.request_id
        row = snapshot.row_of_owner(owner)
        if row is None or row in st.excluded:
            return False
        sl = next(s for s in snapshot.slices[row] if s.owner == owner)
        node, gpu_index = snapshot.node_of(row), int(snapshot.gpu_index[row])
        pod = render_pod(request=st.item.request, node=node, gpu_index=gpu_index,
                         # Only the pod's name and namespace are used (both depend on the
                         # request alone), so a slice without a class is fine.
                         mps_slice=sl, workload_class=sl.workload_class or WorkloadClass.MEDIUM,
                         image=self.config.image,
                         gpu_memory_total_mib=int(snapshot.mem_total[row]))
        st.row, st.owner, st.node, st.gpu_index = row, owner, node, gpu_index
        st.namespace, st.name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        st.tried += 1
        st.running = self.config.bind_timeout_s <= 0
        st.reason = "adopted the pod an earlier attempt created"
        return True

    def _wait(self, waiting: list[_Attempt], *, heartbeat: Callable[[], None] | None) -> None:
        """Poll every pod until each runs, fails or the bind timeout passes."""
        cfg = self.config
        open_ = [st for st in waiting if not st.running]
        if not open_:
            return
        deadline = self.clock.now() + cfg.bind_timeout_s
        while open_:
            for st in list(open_):
                try:
                    phase = self.cluster.pod_phase(st.namespace, st.name)
                except SchedulerError as exc:
                    phase = f"unknown ({exc})"
                if phase == PodPhase.RUNNING.value:
                    st.running, st.reason = True, "pod running"
                    open_.remove(st)
                elif phase == PodPhase.FAILED.value:
                    st.reason = "pod failed to start"
                    self._delete_quietly(st.namespace, st.name)
                    open_.remove(st)
                else:
                    st.reason = (f"pod not running after {cfg.bind_timeout_s:.0f} s "
                                 f"(last phase {phase})")
            if not open_:
                break
            if self.clock.now() >= deadline:
                for st in open_:
                    self._delete_quietly(st.namespace, st.name)
                break
            if heartbeat is not None:
                heartbeat()
            self.clock.sleep(cfg.poll_s)

    def _delete_quietly(self, namespace: str, name: str) -> None:
        # The pod may be gone or the API down; the claim's lease expiry requeues either way.
        with contextlib.suppress(SchedulerError):
            self.cluster.delete_pod(namespace, name)


class PlacementStep:
    """The leader's placement pass, every iteration (``core.controller.loop``).

    The scheduler is rebuilt from the active weight version at each pass, so an
    approved version takes effect at the next pass. ``heartbeat`` is the loop's:
    it renews the lease while the pass waits for pods.
    """

    name = "placement"
    leader_only = True
    runs_in_heartbeat = False

    def __init__(self, worker: PlacementWorker, *, metrics: ControllerMetrics,
                 heartbeat: Callable[[], None] | None = None,
                 timer: Callable[[], float] | None = None) -> None:
        self.worker = worker
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.timer = timer
        self.bound_last_run = 0
        self.last_outcomes: list[PlacementOutcome] = []

    def due(self, now: float) -> bool:
        return True

    def run(self, *, now: float, leading: bool) -> None:
        self.bound_last_run = 0
        started = self.timer() if self.timer is not None else 0.0
        outcomes = self.worker.run_once(heartbeat=self.heartbeat)
        self.last_outcomes = outcomes
        if outcomes:
            elapsed = (self.timer() - started) if self.timer is not None else 0.0
            per_request = elapsed / len(outcomes)
            for outcome in outcomes:
                self.metrics.placements.labels(outcome=outcome.status.value).inc()
                self.metrics.placement_seconds.observe(per_request)
        self.bound_last_run = sum(1 for o in outcomes if o.status is PlacementStatus.BOUND)
