"""The controller's placement step: claim → decide → reserve → bind → wait → record.

Uses ports only (store, cluster, clock). A pass claims a batch and decides each
request over one snapshot of the cluster, updated as slices are reserved (so a
batch never double-books its own GPUs); it reserves the batch's slices in the
store, records the decisions, creates the pods and waits for all of them
together (``core.controller.batching``: one transaction or one watch each where
the ports allow). When binding fails or a pod does not come up, it releases the
slice, excludes that GPU and tries the next best one, up to
``max_bind_attempts``; then it gives the request back to the queue (or fails it
once its attempts are spent) with the reason. Every decision is recorded with
its matrix and weight version.

Invariants: a slice is held in the store before its pod is created, and a
reservation the store refuses (another placer took the space) is never bound;
the snapshot may be kept for ``snapshot_max_age_s`` between passes (0: read at
every pass), since the store's reservations, not the snapshot, guard against
over-commit; it is read afresh after a change of leadership and for any request
on a retry (its earlier pod may exist, to be adopted).

``PlacementStep`` runs one pass per loop iteration on the leader
(``core.controller.loop``) and says when the queue may hold more (``more_work``),
so that the loop does not sleep between passes while there is work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.catalog import Catalog
from core.controller.batching import PassStore, bind_all
from core.controller.metrics import ControllerMetrics
from core.errors import ReservationError, SchedulerError
from core.manifest import DEFAULT_IMAGE, render_pod
from core.model import MpsSlice, WorkloadClass
from core.placement import Decision, FleetSnapshot, Scheduler
from core.placement.framework import STORED_MATRIX_ROWS
from core.ports import (
    ClaimLost,
    Clock,
    Cluster,
    GpuCapacity,
    HeldSlice,
    PlacementStore,
    PodBatchCluster,
    PodExistsError,
    PodPhase,
    QueuedItem,
    SliceReservation,
)
from core.states import PlacementStatus


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    # Requests per pass: large enough that the pass's fixed costs (a claim, a snapshot,
    # a few transactions) are shared by many placements.
    claim_batch: int = 512
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
    # How long a pass may reuse the previous pass's snapshot (kept up to date with this
    # worker's own reservations); 0 = read the cluster at every pass. Reading 5,000 pods
    # takes the better part of a second, so a deep queue reads it every 30 s, not at
    # every pass; a pass in which some pod did not come up reads it afresh next time.
    snapshot_max_age_s: float = 30.0
    # Requests decided and reserved per chunk; a chunk's decisions are recorded and its
    # pods created while the next one is decided.
    pipeline_chunk: int = 64


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
    races: list[str] = field(default_factory=list)
    bind_error: str | None = None


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
        self._calls = PassStore(store)
        self._snapshot: FleetSnapshot | None = None
        self._snapshot_at = 0.0

    def invalidate(self) -> None:
        """Read the cluster afresh at the next pass (leadership changed hands)."""
        self._snapshot = None

    def run_once(self, *, heartbeat: Callable[[], None] | None = None
                 ) -> list[PlacementOutcome]:
        """Claim a batch and place it; returns what happened to each request.

        Each round decides, reserves and binds every request still unplaced, then waits
        for all of their pods together (calling ``heartbeat`` while it waits, e.g. to
        renew the leader lease; it may raise to abandon the pass). Requests whose pod
        failed or did not come up go to the next round, without that GPU.
        """
        cfg = self.config
        items, lost = self._calls.claim(worker=self.worker, now=self.clock.now(),
                                        lease_seconds=cfg.lease_seconds, limit=cfg.claim_batch)
        done = [PlacementOutcome(item.request_id, PlacementStatus.LOST, None, None,
                                 f"claim lost: {exc}", 0) for item, exc in lost]
        if not items:
            return done
        beat = heartbeat or (lambda: None)
        beat()
        try:
            snapshot = self._fleet(items)
        except SchedulerError as exc:
            # The cluster cannot be read: no attempt was made. Give every claim back at
            # once (not after the claim lease) and refund its attempt.
            return done + self._give_back(items, reason=f"the cluster did not answer: {exc}")
        beat()
        scheduler = self.scheduler()
        states = [_Attempt(item) for item in items]
        pending = list(states)
        for _ in range(cfg.max_bind_attempts):
            waiting = self._bind_round(pending, snapshot, scheduler, beat)
            if waiting:
                self._wait(waiting, heartbeat=heartbeat)
                self._record(waiting, snapshot, done)
            pending = [st for st in pending if st.outcome is None and not st.gave_up]
            if not pending:
                break
        for st in states:
            if st.outcome is None:
                if st.owner:
                    snapshot.unreserve(st.owner)
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
        order = {item.request_id: i for i, (item, _) in enumerate(lost)}
        order.update({st.item.request_id: len(lost) + i for i, st in enumerate(states)})
        return sorted(done, key=lambda o: order[o.request_id])

    def _fleet(self, items: Sequence[QueuedItem]) -> FleetSnapshot:
        """The snapshot this pass decides over: the previous one while it is young enough
        and no request is on a retry, else the cluster read afresh."""
        now = self.clock.now()
        retry = any(getattr(item, "attempts", 1) > 1 for item in items)
        if self._snapshot is not None and not retry and \
                now - self._snapshot_at < self.config.snapshot_max_age_s:
            return self._snapshot
        self._snapshot = None
        nodes = self.cluster.nodes()
        self._snapshot = FleetSnapshot(nodes, self.catalog, max_clients=self.max_clients)
        self._snapshot_at = now
        return self._snapshot

    def _decide(self, scheduler: Scheduler, st: _Attempt, snapshot: FleetSnapshot) -> Decision:
        started = self.timer() if self.timer is not None else 0.0
        decision = scheduler.decide(st.item.request, snapshot, exclude_rows=st.excluded)
        if self.timer is not None and self.on_decision is not None:
            self.on_decision(self.timer() - started)
        return decision

    def _bind_round(self, pending: Sequence[_Attempt], snapshot: FleetSnapshot,
                    scheduler: Scheduler, beat: Callable[[], None]) -> list[_Attempt]:
        """Decide, reserve and create the pods of ``pending``; those with a pod to wait for.

        In chunks of ``pipeline_chunk``: while one chunk's pods are created and the next
        chunk's decisions recorded (on two I/O threads; a chunk's decisions are recorded
        before its pods are created), the chunk after is decided and reserved, so the round
        trips overlap the deciding."""
        cfg = self.config
        waiting: list[_Attempt] = []
        to_place: list[_Attempt] = []
        for st in pending:
            st.races = []
            (waiting if self._adopt(st, snapshot) else to_place).append(st)
        chunk = max(1, cfg.pipeline_chunk)
        jobs: list[Future[list[_Attempt]]] = []
        # Two I/O threads for this round, when there is more than one chunk to overlap: one
        # records each chunk's decisions, the other then creates that chunk's pods (after its
        # decisions are recorded), so that one chunk's pods are created while the next
        # chunk's decisions are recorded and the one after is decided.
        overlap = len(to_place) > chunk
        recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.worker}-rec") \
            if overlap else None
        binder = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.worker}-bind") \
            if overlap else None
        try:
            for start in range(0, len(to_place), chunk):
                final = self._decide_and_reserve(to_place[start:start + chunk], snapshot,
                                                 scheduler)
                _explain(final)
                beat()
                binding, pods = self._pods_for(final, snapshot)
                if recorder is None or binder is None:
                    self._record_chunk(final)
                    jobs.append(_done(self._bind_chunk(binding, pods)))
                    continue
                recorded = recorder.submit(self._record_chunk, final)
                jobs.append(binder.submit(self._bind_chunk, binding, pods, recorded))
        finally:
            for io in (recorder, binder):
                if io is not None:
                    io.shutdown(wait=True)  # every chunk lands before the round goes on
            created = [job.result() for job in jobs]
        failed: list[str] = []
        for batch in created:
            for st in batch:
                if st.bind_error is not None:
                    snapshot.unreserve(st.owner)
                    failed.append(st.owner)
                    st.excluded.append(st.row)
                    st.reason = f"{snapshot.key(st.row)}: bind failed: {st.bind_error}"
                    continue
                waiting.append(st)
        self._calls.release_reservations(failed)
        beat()
        return waiting

    def _decide_and_reserve(self, todo: Sequence[_Attempt], snapshot: FleetSnapshot,
                            scheduler: Scheduler) -> list[tuple[_Attempt, Decision, bool]]:
        """Decide each request over the snapshot, reserving its slice there (so the batch
        never books one GPU twice), then reserve the batch in the store. A slice the store
        refuses (another placer took the space since the snapshot) is given back in the
        snapshot, its GPU excluded for that request, and the request decided again (not a
        bind attempt), up to ``max_reservation_conflicts``. Per request: its last decision
        and whether its slice is held."""
        cfg = self.config
        final: list[tuple[_Attempt, Decision, bool]] = []
        to_decide = list(todo)
        while to_decide:
            proposals: list[tuple[_Attempt, Decision, SliceReservation]] = []
            for st in to_decide:
                decision = self._decide(scheduler, st, snapshot)
                if decision.row is None or len(st.races) >= cfg.max_reservation_conflicts:
                    final.append((st, decision, False))
                    continue
                sl = decision.mps_slice()
                reservation = self._reservation(snapshot, decision.row, sl)
                try:
                    snapshot.reserve(decision.row, sl)
                except ReservationError as exc:  # the snapshot's own view refuses it
                    st.races.append(str(exc))
                    st.excluded.append(decision.row)
                    final.append((st, decision, False))
                    continue
                proposals.append((st, decision, reservation))
            conflicts = self._calls.reserve([p[2] for p in proposals],
                                            observed_at=self._snapshot_at, worker=self.worker,
                                            now=self.clock.now())
            to_decide = []
            for (st, decision, reservation), conflict in zip(proposals, conflicts, strict=True):
                if conflict is None:
                    final.append((st, decision, True))
                    continue
                snapshot.unreserve(reservation.owner)
                st.races.append(conflict)
                st.excluded.append(decision.row or 0)
                to_decide.append(st)
        return final

    def _pods_for(self, final: Sequence[tuple[_Attempt, Decision, bool]],
                  snapshot: FleetSnapshot) -> tuple[list[_Attempt], list[dict[str, Any]]]:
        """The pods of the reserved decisions (the others give up with their reason)."""
        cfg = self.config
        binding: list[_Attempt] = []
        pods: list[dict[str, Any]] = []
        for st, decision, reserved in final:
            if not reserved:
                races = (f" (other placers took {len(st.races)} GPU(s) first; last: "
                         f"{st.races[-1]})") if st.races else ""
                st.reason = (decision.summary if decision.row is None
                             else "every GPU tried was taken by another placer") + races
                st.gave_up = True
                continue
            row = decision.row
            assert row is not None
            sl = decision.mps_slice()
            pod = render_pod(request=st.item.request, node=decision.node or "",
                             gpu_index=decision.gpu_index or 0, mps_slice=sl,
                             workload_class=decision.workload_class,
                             weight_version=decision.weight_version, image=cfg.image,
                             gpu_memory_total_mib=int(snapshot.mem_total[row]))
            st.row, st.owner = row, sl.owner
            st.node, st.gpu_index = decision.node, decision.gpu_index
            st.namespace, st.name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            st.tried += 1
            st.running = False
            st.bind_error = None
            pods.append(pod)
            binding.append(st)
        return binding, pods

    def _record_chunk(self, final: Sequence[tuple[_Attempt, Decision, bool]]) -> None:
        """Record the chunk's decisions (on the recording I/O thread)."""
        self._calls.record([(st.item.pk, d) for st, d, _ in final], now=self.clock.now(),
                           decided_by=self.worker)

    def _bind_chunk(self, binding: Sequence[_Attempt], pods: Sequence[dict[str, Any]],
                    recorded: Future[None] | None = None) -> list[_Attempt]:
        """Create the chunk's pods once its decisions are recorded (``recorded``: raises
        what recording raised, and then no pod is created); on the binding I/O thread:
        touches only the attempts of this chunk and the cluster port."""
        cfg = self.config
        if recorded is not None:
            recorded.result()
        for st, error in zip(binding, bind_all(self.cluster, pods), strict=True):
            # PodExistsError: our own earlier attempt (same deterministic name): judge it by
            # its phase.
            if error is not None and not isinstance(error, PodExistsError):
                st.bind_error = str(error)
            elif cfg.bind_timeout_s <= 0:
                st.running, st.reason = True, "pod accepted"
        return list(binding)

    def _record(self, waiting: Sequence[_Attempt], snapshot: FleetSnapshot,
                done: list[PlacementOutcome]) -> None:
        """Bound for the pods that run (one write); the others give their GPU back."""
        running = [st for st in waiting if st.running]
        finished = self._calls.finish_bound([st.item.pk for st in running],
                                            worker=self.worker, now=self.clock.now())
        for st in running:
            if st.item.pk not in finished:
                self._lost(st, ClaimLost(f"request {st.item.pk} is no longer claimed by "
                                         f"{self.worker}"), done)
                continue
            st.outcome = PlacementOutcome(st.item.request_id, PlacementStatus.BOUND,
                                          st.node, st.gpu_index, st.reason, st.tried)
            done.append(st.outcome)
        failed = [st for st in waiting if not st.running]
        if failed:
            self.invalidate()  # the cluster is not what the snapshot says: read it again
        for st in failed:
            snapshot.unreserve(st.owner)
            st.excluded.append(st.row)
            st.reason = f"{snapshot.key(st.row)}: {st.reason}"
        self._calls.release_reservations([st.owner for st in failed])

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

    def _reservation(self, snapshot: FleetSnapshot, row: int, sl: MpsSlice) -> SliceReservation:
        """``sl`` on ``row``'s GPU for the store, with what this snapshot knows is held
        there (taken before the snapshot reserves it)."""
        observed = tuple(HeldSlice(owner=o.owner, thread_pct=o.thread_pct,
                                   memory_mib=o.memory_mib) for o in snapshot.slices[row])
        capacity = GpuCapacity(
            memory_mib=int(snapshot.cols.mem_free[row]) + sum(h.memory_mib for h in observed),
            replicas=snapshot.replicas_of(row))
        return SliceReservation(owner=sl.owner, node=snapshot.node_of(row),
                                gpu_index=int(snapshot.gpu_index[row]),
                                thread_pct=sl.thread_pct, memory_mib=sl.memory_mib,
                                capacity=capacity, observed=observed)

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
        """Wait until each pod runs, fails or the bind timeout passes: one watch where the
        cluster offers it, else polling every ``poll_s``. A pod that will not run is
        deleted (its slice is given back by the caller)."""
        cfg = self.config
        open_ = [st for st in waiting if not st.running]
        if not open_:
            return
        if isinstance(self.cluster, PodBatchCluster):
            try:
                results = self.cluster.wait_for_pods(
                    [(st.namespace, st.name) for st in open_], timeout_s=cfg.bind_timeout_s,
                    heartbeat=heartbeat)
            except SchedulerError:
                results = None  # the watch failed: poll what is left
            if results is not None:
                for st in open_:
                    found = results.get((st.namespace, st.name))
                    if found is not None and found.running:
                        st.running, st.reason = True, "pod running"
                        continue
                    if found is None or found.timed_out:
                        phase = found.phase if found is not None else "unknown"
                        st.reason = (f"pod not running after {cfg.bind_timeout_s:.0f} s "
                                     f"(last phase {phase})")
                    elif found.phase == PodPhase.FAILED.value:
                        st.reason = f"pod failed to start ({found.reason})"
                    else:
                        st.reason = f"pod cannot start: {found.reason}"
                    self._delete_quietly(st.namespace, st.name)
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


def _explain(final: Sequence[tuple[_Attempt, Decision, bool]]) -> None:
    """Build what the store records of each decision (its summary and its stored matrix
    rows) here, on the deciding thread, right after deciding: the recording thread then
    only writes them. Built there instead, these NumPy passes over every GPU row would
    contend with the deciding for the interpreter lock (each pass over thousands of rows
    lets go of it and waits to take it back), and cost the process about twice the CPU."""
    for _, decision, _ in final:
        if isinstance(decision, Decision):
            decision.matrix_json(max_rows=STORED_MATRIX_ROWS)  # builds the summary too


_T = TypeVar("_T")


def _done(value: _T) -> Future[_T]:
    """A future that already holds ``value`` (a chunk run inline: nothing to overlap)."""
    future: Future[_T] = Future()
    future.set_result(value)
    return future


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
        # The last pass claimed a full batch: the queue may hold more, so the loop runs
        # the next pass at once instead of sleeping its interval.
        self.more_work = False

    def due(self, now: float) -> bool:
        return True

    def on_leadership(self, leading: bool) -> None:
        self.worker.invalidate()

    def run(self, *, now: float, leading: bool) -> None:
        self.bound_last_run = 0
        self.more_work = False
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
        self.more_work = len(outcomes) >= self.worker.config.claim_batch
