"""The digital twin of the GPU fleet: implements the ``Cluster`` and ``Metrics`` ports.

Why: the console must show a living fleet without a cluster, the controller's
tests need a faithful fake, and policies are evaluated on replayed traffic.
One simulator serves all three.

How it runs: time comes from the injected ``Clock``. Every port call first
catches the simulation up to ``clock.now()`` (``step(dt)`` sleeps on the clock
and catches up). Simulation advances in whole ticks (1 s by default), in
chunks of up to ``max_chunk_s`` that end wherever something changes (a pod
becomes Running, a fault expires). Within a chunk all ticks and all requests
are computed at once with NumPy: per-tick offered work per replica, co-runner
slowdown, the Lindley recursion for each replica's queue (vectorized through
cumulative sums), Little's-law concurrency, utilization, power and energy per
GPU, then every request's latency, TTFT, success and histogram bucket.

Invariants kept:
- counters (requests, successes, tokens, histogram counts, energy) never
  decrease; every arriving request is counted exactly once, in the tick it
  arrives (success or failure is decided there);
- a scheduled pod's slice never over-commits its GPU: a pod that would is
  Failed with the reason, never squeezed in;
- a pod is Pending until it is scheduled and ``startup_delay_s`` has passed,
  then Running until it fails or is deleted; only Running pods serve traffic;
- power stays within [idle, TDP] for a working GPU (0 for a failed one);
- the same seed, clock steps and calls give the same results.

Simplifications, on purpose: requests are counted when they arrive, not
when they finish; requests already queued on a replica that fails keep the
outcome decided at their arrival; pods on a NotReady node are never evicted.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from types import MappingProxyType
from typing import Any

import numpy as np

from core.catalog import Catalog
from core.classify import ClassRules
from core.errors import TransientError, ValidationError
from core.fleet import default_fleet
from core.manifest import (
    HOSTNAME_LABEL,
    dns_name,
    read_pod,
)
from core.model import Gpu, MpsSlice, Node, WorkloadClass, gb_to_mib
from core.mps.layout import MAX_MPS_CLIENTS
from core.ports import Clock, PodExistsError, PodNotFoundError, PodPhase, ReplicaPod
from core.settings import Settings
from core.sim import faults as fault_kinds
from core.sim.faults import ActiveFault, Fault, FaultBook, FaultEffects, FaultKind
from core.sim.perf_model import (
    _MAX_PREFILL_FRACTION as _MAX_PREFILL,
)
from core.sim.perf_model import (
    PerfModel,
    iteration_time,
    power_w,
    solve_concurrency,
)
from core.sim.traffic import Arrivals, ArrivalSource, DiurnalTraffic, assign_deployments
from core.telemetry import (
    E2E_LATENCY_BUCKETS_S,
    TTFT_BUCKETS_S,
    DeploymentCounters,
    DeploymentTelemetry,
    FleetTelemetry,
    FleetTotals,
    GpuTelemetry,
    Histogram,
    histogram_quantile,
)

_E2E = np.array(E2E_LATENCY_BUCKETS_S)
_TTFT = np.array(TTFT_BUCKETS_S)
_CENT = Decimal("0.000001")
_NANO = Decimal("0.000000001")


@dataclass(frozen=True)
class TwinConfig:
    """Knobs of the twin; all times in simulated seconds."""

    tick_s: float = 1.0
    startup_delay_s: float = 60.0  # bind → Running (image pull, weight load)
    request_timeout_s: float = 120.0  # clients give up; counted as failures
    endpoint_grace_s: float = 10.0  # a failed replica still gets traffic until probes notice
    namespace: str = "default"  # namespace of the pods already running at start
    max_chunk_s: float = 300.0
    util_smoothing_s: float = 5.0  # EWMA time constant of reported utilization and power
    load_window_s: float = 10.0  # the load that latency responds to is averaged this long
    histogram_slot_s: float = 10.0  # resolution of the 5-minute latency windows
    warmup_s: float = 0.0  # simulate this long before the clock's "now" at start
    seed: int = 0
    # Relative traffic per model name. Models not named get a share proportional to their
    # capacity at start (operators size deployments to their traffic); a model that first
    # appears later (bind) gets the median share.
    traffic_weights: Mapping[str, float] | None = None
    # The request the capacity-proportional traffic shares are computed for.
    reference_prompt_tokens: int = 176
    reference_output_tokens: int = 15

    def __post_init__(self) -> None:
        positive = ("tick_s", "request_timeout_s", "max_chunk_s", "histogram_slot_s")
        for name in positive:
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValidationError(f"sim.{name}", "must be a number > 0")
        for name in ("startup_delay_s", "endpoint_grace_s", "util_smoothing_s", "warmup_s",
                     "load_window_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValidationError(f"sim.{name}", "must be a number ≥ 0")
        if self.max_chunk_s > 600 or self.max_chunk_s < self.tick_s:
            raise ValidationError("sim.max_chunk_s", "must be within [tick_s, 600]")
        if self.histogram_slot_s < self.tick_s:
            raise ValidationError("sim.histogram_slot_s", "must be ≥ tick_s")
        if self.seed < 0:
            raise ValidationError("sim.seed", "must be ≥ 0")
        for model, weight in (self.traffic_weights or {}).items():
            if not math.isfinite(weight) or weight < 0:
                raise ValidationError(f"sim.traffic_weights.{model}", "must be a number ≥ 0")


@dataclass(frozen=True, slots=True)
class PodStatus:
    """A pod as the twin sees it (for the console's fleet view and tests)."""

    namespace: str
    name: str
    node: str
    gpu_index: int
    model: str
    owner: str
    thread_pct: int
    memory_mib: int
    phase: str
    reason: str = ""


@dataclass(slots=True)
class _Pod:
    namespace: str
    name: str
    node: str
    gpu_index: int
    owner: str
    model: str
    workload_class: WorkloadClass
    thread_pct: int
    memory_mib: int
    created_at: float
    scheduled_at: float | None = None
    ready_at: float | None = None
    failed_at: float | None = None
    reason: str = ""
    replica: int = -1
    deployment: int = -1

    def holds_gpu(self) -> bool:
        return self.scheduled_at is not None and self.failed_at is None


@dataclass(slots=True)
class _Replicas:
    """Append-only columns, one row per replica (a scheduled pod) ever created."""

    gpu: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    deployment: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    share: np.ndarray = field(default_factory=lambda: np.empty(0))
    # k1, k2, k3, k4, k5, kp, max batch
    params: np.ndarray = field(default_factory=lambda: np.empty((0, 7)))
    queue: np.ndarray = field(default_factory=lambda: np.empty(0))  # waiting work (slice-s)
    mean_work: np.ndarray = field(default_factory=lambda: np.empty(0))  # slice-s per request
    prefill_frac: np.ndarray = field(default_factory=lambda: np.empty(0))  # of that work
    concurrency: np.ndarray = field(default_factory=lambda: np.empty(0))
    # Work served per second over the last (load window − 1) ticks, oldest first.
    recent: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    def add(self, *, gpu: int, deployment: int, share: float, params: tuple[float, ...],
            mean_work: float, prefill_frac: float) -> int:
        self.gpu = np.append(self.gpu, gpu)
        self.deployment = np.append(self.deployment, deployment)
        self.share = np.append(self.share, share)
        self.params = np.vstack([self.params, np.array(params, dtype=np.float64)])
        self.queue = np.append(self.queue, 0.0)
        self.mean_work = np.append(self.mean_work, mean_work)
        self.prefill_frac = np.append(self.prefill_frac, prefill_frac)
        self.concurrency = np.append(self.concurrency, 0.0)
        self.recent = np.hstack([self.recent, np.zeros((self.recent.shape[0], 1))])
        return int(self.gpu.shape[0] - 1)


@dataclass(frozen=True, slots=True)
class _Live:
    """The replicas with endpoints during one chunk (columns, one row per replica)."""

    idx: np.ndarray  # rows of ``_Replicas``
    serving: np.ndarray  # False: failed, endpoints not yet removed (requests fail)
    gpu: np.ndarray
    deployment: np.ndarray
    share: np.ndarray
    params: np.ndarray
    latency_factor: np.ndarray
    error_rate: np.ndarray

    @property
    def size(self) -> int:
        return int(self.idx.shape[0])


class Twin:
    """A simulated fleet with model servers, traffic and faults, driven by a clock."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        nodes: Iterable[Node] | None = None,
        traffic: ArrivalSource | None = None,
        perf: PerfModel | None = None,
        config: TwinConfig | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._settings = settings
        self._catalog: Catalog = settings.catalog
        self._classes: ClassRules = settings.classes
        self._clock = clock
        self.config = cfg = config or TwinConfig()
        self.perf = perf or PerfModel.for_catalog(self._catalog)
        self._traffic: ArrivalSource = traffic if traffic is not None else DiurnalTraffic(
            seed=cfg.seed)
        self._rng = np.random.default_rng([cfg.seed, 11])
        self._faults = FaultBook()
        fleet = tuple(nodes) if nodes is not None else fleet_from_settings(settings)
        if not fleet:
            raise ValidationError("fleet", "needs at least one node")

        # --- nodes and GPU rows (static) -----------------------------------------------
        self._node_names = [n.name for n in fleet]
        if len(set(self._node_names)) != len(self._node_names):
            raise ValidationError("fleet", "node names must be unique")
        self._node_labels = {n.name: MappingProxyType(dict(n.labels)) for n in fleet}
        self._schedulable = {n.name: n.schedulable for n in fleet}
        rows = [(n, g) for n in fleet for g in n.gpus]
        self._row_of = {(n.name, g.index): i for i, (n, g) in enumerate(rows)}
        self._g_node = [n.name for n, _ in rows]
        self._g_index = [g.index for _, g in rows]
        self._g_type = [g.gpu_type for _, g in rows]
        self._g_uuid = [g.uuid or f"GPU-{n.name}-{g.index}" for n, g in rows]
        self._g_mem_total = np.array([g.memory_total_mib for _, g in rows], dtype=np.int64)
        self._g_other_mem = np.array([g.other_memory_mib for _, g in rows], dtype=np.int64)
        types = [self._catalog[t] for t in self._g_type]
        self._g_idle = np.array([t.idle_w for t in types])
        self._g_tdp = np.array([t.tdp_w for t in types])
        self._g_price = [t.price_per_gpu_hour for t in types]
        self._g_tops = np.array([self._catalog.throughput(t) for t in self._g_type])
        self._g_util = np.array([g.utilization for _, g in rows])
        self._g_power = np.array([g.power_w or float(self._g_idle[i])
                                  for i, (_, g) in enumerate(rows)])
        self._g_energy = np.zeros(len(rows))
        self.gpu_count = len(rows)

        # --- time grid --------------------------------------------------------------------
        self._tick_s = cfg.tick_s
        self._origin = clock.now() - cfg.warmup_s
        self._ticks = 0
        self._ring_len = math.ceil(3600.0 / cfg.tick_s) + 1
        self._ticks_per_hslot = max(1, round(cfg.histogram_slot_s / cfg.tick_s))
        hslot_s = self._ticks_per_hslot * cfg.tick_s
        self._hist_window = max(1, math.ceil(300.0 / hslot_s))
        self._hist_len = max(self._hist_window, math.ceil(cfg.max_chunk_s / hslot_s) + 1) + 2
        self._hist_zeroed = -1
        self._max_chunk = max(1, int(cfg.max_chunk_s / cfg.tick_s))

        # --- deployments and their counters (columns grow when a model appears) ---------------
        self._d_keys: list[tuple[str, str]] = []
        self._d_index: dict[tuple[str, str], int] = {}
        self._d_weight = np.empty(0)
        self._d_explicit: list[bool] = []
        self._explicit_weights: dict[str, float] = dict(cfg.traffic_weights or {})
        self._c_requests = np.empty(0, dtype=np.int64)
        self._c_success = np.empty(0, dtype=np.int64)
        self._c_prompt = np.empty(0, dtype=np.int64)
        self._c_gen = np.empty(0, dtype=np.int64)
        self._c_e2e = np.empty((0, _E2E.size + 1), dtype=np.int64)
        self._c_e2e_sum = np.empty(0)
        self._c_ttft = np.empty((0, _TTFT.size + 1), dtype=np.int64)
        self._c_ttft_sum = np.empty(0)
        self._r_req = np.zeros((self._ring_len, 0), dtype=np.int64)
        self._r_ok = np.zeros((self._ring_len, 0), dtype=np.int64)
        self._r_gen = np.zeros((self._ring_len, 0), dtype=np.int64)
        self._r_gpu = np.zeros((self._ring_len, self.gpu_count), dtype=np.int64)
        self._h_e2e = np.zeros((self._hist_len, 0, _E2E.size + 1), dtype=np.int64)
        self._h_e2e_sum = np.zeros((self._hist_len, 0))
        self._h_ttft = np.zeros((self._hist_len, 0, _TTFT.size + 1), dtype=np.int64)

        # --- pods already running ---------------------------------------------------------
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._load_window = max(1, round(cfg.load_window_s / cfg.tick_s))
        self._rep = _Replicas(recent=np.zeros((self._load_window - 1, 0)))
        self._rep_alive = np.empty(0, dtype=bool)
        before = self._origin - max(cfg.startup_delay_s, 1.0)
        for node, gpu in rows:
            for sl in gpu.slices:
                wc = sl.workload_class or \
                    self._classes.classify(sl.memory_mib / 1024).workload_class
                pod = _Pod(namespace=cfg.namespace, name=dns_name(sl.owner), node=node.name,
                           gpu_index=gpu.index, owner=sl.owner, model=sl.model or sl.owner,
                           workload_class=wc, thread_pct=sl.thread_pct,
                           memory_mib=sl.memory_mib, created_at=before)
                if (pod.namespace, pod.name) in self._pods:
                    raise ValidationError("fleet", f"two slices are named {sl.owner!r}")
                self._pods[(pod.namespace, pod.name)] = pod
                self._start_pod(pod, at=before)
                pod.ready_at = before
        self._init_weights()
        for node, gpu in rows:
            if not gpu.healthy:
                self._faults.inject(fault_kinds.gpu_failure(node.name, gpu.index), now=before)
        for node in fleet:
            if not node.ready:
                self._faults.inject(fault_kinds.node_not_ready(node.name), now=before)
        if cfg.warmup_s > 0:
            self.sync()

    # ======================================================================================
    # Cluster port
    # ======================================================================================
    def nodes(self) -> tuple[Node, ...]:
        with self._lock:
            self.sync()
            now = self._clock.now()
            eff = self._faults.effects(now)
            held = self._held_by_row()
            failed = self._failed_rows(eff)
            by_node: dict[str, list[Gpu]] = {name: [] for name in self._node_names}
            for row in range(self.gpu_count):
                node, index = self._g_node[row], self._g_index[row]
                usable = eff.gpu_usable(node, index)
                dead = bool(failed[row])
                slices = tuple(
                    MpsSlice(owner=p.owner, thread_pct=p.thread_pct, memory_mib=p.memory_mib,
                             model=p.model, workload_class=p.workload_class)
                    for p in held.get(row, ()))
                by_node[node].append(Gpu(
                    index=index, gpu_type=self._g_type[row],
                    memory_total_mib=int(self._g_mem_total[row]),
                    utilization=0.0 if dead else
                    round(float(np.clip(self._g_util[row], 0.0, 1.0)), 4),
                    power_w=0.0 if dead else round(float(self._g_power[row]), 1),
                    slices=slices, healthy=usable, uuid=self._g_uuid[row],
                    other_memory_mib=int(self._g_other_mem[row])))
            return tuple(
                Node(name=name, gpus=tuple(by_node[name]), schedulable=self._schedulable[name],
                     ready=name not in eff.not_ready_nodes, labels=self._node_labels[name])
                for name in self._node_names)

    def bind(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self.sync()
            record = self._parse_pod(pod)
            key = (record.namespace, record.name)
            if key in self._pods:
                raise PodExistsError(f"pod {record.namespace}/{record.name} already exists")
            self._pods[key] = record
            self._schedule_pending(self._clock.now())

    def pod_phase(self, namespace: str, name: str) -> str:
        with self._lock:
            self.sync()
            pod = self._pods.get((namespace, name))
            if pod is None:
                raise PodNotFoundError(f"pod {namespace}/{name} not found")
            now = self._clock.now()
            return self._phase(pod, now=now, eff=self._faults.effects(now)).value

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self.sync()
            pod = self._pods.pop((namespace, name), None)
            if pod is not None and pod.replica >= 0:
                self._rep_alive[pod.replica] = False
            self._schedule_pending(self._clock.now())

    def set_schedulable(self, node: str, schedulable: bool) -> None:
        with self._lock:
            self.sync()
            if node not in self._schedulable:
                raise ValidationError("node", f"{node!r} is not a node of this fleet")
            self._schedulable[node] = bool(schedulable)
            self._schedule_pending(self._clock.now())

    # ======================================================================================
    # Metrics port
    # ======================================================================================
    def available(self) -> bool:
        with self._lock:
            return not self._faults.effects(self._clock.now()).metrics_down

    def telemetry(self) -> FleetTelemetry:
        with self._lock:
            self.sync()
            now = self._clock.now()
            eff = self._faults.effects(now)
            if eff.metrics_down:
                raise TransientError("metrics source unavailable (simulated outage)", delay=30.0)
            return self._telemetry(now, eff)

    # ======================================================================================
    # Simulation control
    # ======================================================================================
    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def simulated_until(self) -> float:
        """Epoch time up to which the simulation has run (on the tick grid)."""
        return self._origin + self._ticks * self._tick_s

    def step(self, dt: float) -> None:
        """Let ``dt`` seconds pass on the clock, then catch the simulation up.

        On a ``ManualClock`` this returns at once; on the system clock it waits.
        """
        if not math.isfinite(dt) or dt < 0:
            raise ValidationError("dt", "must be a finite number ≥ 0")
        self._clock.sleep(dt)
        self.sync()

    def sync(self) -> None:
        """Simulate every whole tick up to the clock's now."""
        with self._lock:
            target = math.floor((self._clock.now() - self._origin) / self._tick_s + 1e-9)
            while self._ticks < target:
                self._simulate(self._chunk_length(target))

    def inject(self, fault: Fault) -> str:
        """Start ``fault`` now; returns its id for ``clear_fault``."""
        with self._lock:
            self.sync()
            if fault.node is not None:
                if fault.node not in self._schedulable:
                    raise ValidationError("fault.node",
                                          f"{fault.node!r} is not a node of this fleet")
                if fault.kind is FaultKind.GPU_FAILURE and \
                        (fault.node, fault.gpu_index) not in self._row_of:
                    raise ValidationError("fault.gpu_index",
                                          f"{fault.node} has no GPU {fault.gpu_index}")
            now = self._clock.now()
            active = self._faults.inject(fault, now=now)
            if fault.kind is FaultKind.GPU_FAILURE:
                self._fail_pods(lambda p: (p.node, p.gpu_index) == (fault.node, fault.gpu_index),
                                now=now, reason="GPU failure (Xid 79: fallen off the bus)")
            elif fault.kind is FaultKind.DEVICE_PLUGIN_FAILURE:
                self._fail_pods(lambda p: p.node == fault.node, now=now,
                                reason="lost its GPU: MPS daemon and device plugin restarted "
                                       "and did not come back")
            return active.id

    def clear_fault(self, fault_id: str) -> bool:
        with self._lock:
            self.sync()
            cleared = self._faults.clear(fault_id)
            self._schedule_pending(self._clock.now())
            return cleared

    def clear_faults(self) -> int:
        with self._lock:
            self.sync()
            count = self._faults.clear_all()
            self._schedule_pending(self._clock.now())
            return count

    def faults(self) -> tuple[ActiveFault, ...]:
        with self._lock:
            return self._faults.active(self._clock.now())

    def pods(self) -> tuple[PodStatus, ...]:
        with self._lock:
            self.sync()
            now = self._clock.now()
            eff = self._faults.effects(now)
            return tuple(
                PodStatus(namespace=p.namespace, name=p.name, node=p.node,
                          gpu_index=p.gpu_index, model=p.model, owner=p.owner,
                          thread_pct=p.thread_pct, memory_mib=p.memory_mib,
                          phase=self._phase(p, now=now, eff=eff).value, reason=p.reason)
                for p in self._pods.values())

    def replica_pods(self) -> tuple[ReplicaPod, ...]:
        return tuple(ReplicaPod(namespace=p.namespace, name=p.name, node=p.node,
                                gpu_index=p.gpu_index, model=p.model, owner=p.owner,
                                thread_pct=p.thread_pct, memory_mib=p.memory_mib, phase=p.phase)
                     for p in self.pods())

    def set_traffic_weights(self, weights: Mapping[str, float]) -> None:
        """Set the relative traffic of the named models (in every namespace, and for
        deployments of them that appear later); other models keep theirs."""
        with self._lock:
            self.sync()
            for model, weight in weights.items():
                if not math.isfinite(weight) or weight < 0:
                    raise ValidationError(f"traffic_weights.{model}", "must be a number ≥ 0")
                self._explicit_weights[model] = float(weight)
                for i, (_, m) in enumerate(self._d_keys):
                    if m == model:
                        self._d_weight[i] = weight
                        self._d_explicit[i] = True

    def traffic_weights(self) -> dict[tuple[str, str], float]:
        """Each deployment's share of the traffic (shares sum to 1)."""
        with self._lock:
            total = float(self._d_weight.sum()) or 1.0
            return {k: float(w) / total
                    for k, w in zip(self._d_keys, self._d_weight, strict=True)}

    # ======================================================================================
    # Pods
    # ======================================================================================
    def _parse_pod(self, pod: Mapping[str, Any]) -> _Pod:
        p = read_pod(pod)
        sl = p.mps_slice
        wc = sl.workload_class or self._classes.classify(sl.memory_mib / 1024).workload_class
        return _Pod(namespace=p.namespace, name=p.name, node=p.node, gpu_index=p.gpu_index,
                    owner=sl.owner, model=sl.model or sl.owner, workload_class=wc,
                    thread_pct=sl.thread_pct, memory_mib=sl.memory_mib,
                    created_at=self._clock.now())

    def _phase(self, pod: _Pod, *, now: float, eff: FaultEffects) -> PodPhase:
        if pod.failed_at is not None:
            return PodPhase.FAILED
        if pod.scheduled_at is None or pod.ready_at is None:
            return PodPhase.PENDING
        if pod.node in eff.not_ready_nodes:
            return PodPhase.UNKNOWN
        return PodPhase.RUNNING if now >= pod.ready_at else PodPhase.PENDING

    def _held_by_row(self) -> dict[int, list[_Pod]]:
        held: dict[int, list[_Pod]] = {}
        for p in self._pods.values():
            if p.holds_gpu():
                held.setdefault(self._row_of[(p.node, p.gpu_index)], []).append(p)
        return held

    def _schedule_pending(self, now: float) -> None:
        """Start pods whose node can take them now (ready, schedulable, GPU usable)."""
        pending = [p for p in self._pods.values() if p.scheduled_at is None and p.failed_at is None]
        if not pending:
            return
        eff = self._faults.effects(now)
        for pod in sorted(pending, key=lambda p: p.created_at):
            row = self._row_of.get((pod.node, pod.gpu_index))
            if row is None or pod.node in eff.not_ready_nodes or not self._schedulable[pod.node] \
                    or not eff.gpu_usable(pod.node, pod.gpu_index):
                continue
            reason = self._why_not_fit(pod, row)
            if reason:
                pod.failed_at, pod.reason = now, reason
                continue
            self._start_pod(pod, at=max(now, pod.created_at))

    def _why_not_fit(self, pod: _Pod, row: int) -> str:
        held = self._held_by_row().get(row, [])
        where = f"{pod.node}/gpu{pod.gpu_index}"
        threads = sum(p.thread_pct for p in held)
        if threads + pod.thread_pct > 100:
            return (f"MPS over-commit: {pod.thread_pct} % of SM threads asked, "
                    f"{100 - threads} % free on {where}")
        free = int(self._g_mem_total[row] - self._g_other_mem[row]) \
            - sum(p.memory_mib for p in held)
        if pod.memory_mib > free:
            return f"OutOfMemory: {pod.memory_mib} MiB asked, {free} MiB free on {where}"
        if len(held) + 1 > MAX_MPS_CLIENTS:
            return f"MPS client limit ({MAX_MPS_CLIENTS}) reached on {where}"
        return ""

    def _start_pod(self, pod: _Pod, *, at: float) -> None:
        row = self._row_of[(pod.node, pod.gpu_index)]
        pod.scheduled_at = at
        pod.ready_at = at + self.config.startup_delay_s
        pod.deployment = self._deployment(pod.namespace, pod.model)
        p = self.perf.params_for(pod.workload_class, self._g_type[row])
        share = pod.thread_pct / 100.0
        prompt, output = self.config.reference_prompt_tokens, self.config.reference_output_tokens
        ref = p.work_s(prompt, output, share)
        pod.replica = self._rep.add(
            gpu=row, deployment=pod.deployment, share=share,
            params=(p.k1, p.k2, p.k3, p.k4, p.k5, p.kp, float(p.max_batch)), mean_work=ref,
            prefill_frac=p.prefill_s(prompt, share) / ref)
        self._rep_alive = np.append(self._rep_alive, True)

    def _fail_pods(self, which: Callable[[_Pod], bool], *, now: float, reason: str) -> None:
        for p in self._pods.values():
            if p.failed_at is None and p.scheduled_at is not None and which(p):
                p.failed_at, p.reason = now, reason

    # ======================================================================================
    # Deployments and traffic shares
    # ======================================================================================
    def _deployment(self, namespace: str, model: str) -> int:
        key = (namespace, model)
        index = self._d_index.get(key)
        if index is not None:
            return index
        index = len(self._d_keys)
        self._d_keys.append(key)
        self._d_index[key] = index
        explicit = self._explicit_weights
        positive = self._d_weight[self._d_weight > 0]
        weight = explicit.get(model, float(np.median(positive)) if positive.size else 1.0)
        self._d_weight = np.append(self._d_weight, weight)
        self._d_explicit.append(model in explicit)
        grow1 = np.zeros(1, dtype=np.int64)
        self._c_requests = np.append(self._c_requests, grow1)
        self._c_success = np.append(self._c_success, grow1)
        self._c_prompt = np.append(self._c_prompt, grow1)
        self._c_gen = np.append(self._c_gen, grow1)
        self._c_e2e = np.vstack([self._c_e2e, np.zeros((1, _E2E.size + 1), dtype=np.int64)])
        self._c_e2e_sum = np.append(self._c_e2e_sum, 0.0)
        self._c_ttft = np.vstack([self._c_ttft, np.zeros((1, _TTFT.size + 1), dtype=np.int64)])
        self._c_ttft_sum = np.append(self._c_ttft_sum, 0.0)
        column = np.zeros((self._ring_len, 1), dtype=np.int64)
        self._r_req = np.hstack([self._r_req, column])
        self._r_ok = np.hstack([self._r_ok, column])
        self._r_gen = np.hstack([self._r_gen, column])
        self._h_e2e = np.concatenate(
            [self._h_e2e, np.zeros((self._hist_len, 1, _E2E.size + 1), dtype=np.int64)], axis=1)
        self._h_e2e_sum = np.hstack([self._h_e2e_sum, np.zeros((self._hist_len, 1))])
        self._h_ttft = np.concatenate(
            [self._h_ttft, np.zeros((self._hist_len, 1, _TTFT.size + 1), dtype=np.int64)], axis=1)
        return index

    def _init_weights(self) -> None:
        """Traffic shares ∝ each deployment's capacity for the reference request.

        Operators size deployments to their traffic, so a fleet in its initial
        layout is evenly loaded; explicit ``traffic_weights`` override this.
        """
        capacity = np.zeros(len(self._d_keys))
        held = self._held_by_row()
        for row, pods in held.items():
            for p in pods:
                capacity[p.deployment] += self.perf.max_throughput_rps(
                    p.workload_class, self._g_type[row], share=p.thread_pct / 100.0,
                    prompt_tokens=self.config.reference_prompt_tokens,
                    output_tokens=self.config.reference_output_tokens,
                    co_runners=len(pods) - 1)
        for i, explicit in enumerate(self._d_explicit):
            if not explicit:
                self._d_weight[i] = capacity[i]

    # ======================================================================================
    # The simulation
    # ======================================================================================
    def _chunk_length(self, target: int) -> int:
        t0 = self.simulated_until
        ends = [target - self._ticks, self._max_chunk]
        events: list[float] = []
        grace = self.config.endpoint_grace_s
        for p in self._pods.values():
            if p.ready_at is not None and p.failed_at is None and p.ready_at > t0:
                events.append(p.ready_at)
            if p.failed_at is not None and p.failed_at + grace > t0:
                events.append(p.failed_at + grace)
        change = self._faults.next_change(t0)
        if change is not None:
            events.append(change)
        for event in events:
            ends.append(max(1, math.ceil((event - t0) / self._tick_s - 1e-9)))
        return max(1, min(ends))

    def _simulate(self, k_ticks: int) -> None:
        """Advance ``k_ticks`` ticks; nothing changes state-wise inside the chunk."""
        tick = self._tick_s
        t0 = self.simulated_until
        self._schedule_pending(t0)
        eff = self._faults.effects(t0)
        live = self._live_replicas(t0, eff)
        arrivals = self._traffic.arrivals(t0, t0 + k_ticks * tick)
        if not self._d_keys or float(self._d_weight.sum()) <= 0:
            arrivals = Arrivals.empty()  # no deployment to send requests to
        n_req = len(arrivals)
        dep_i = assign_deployments(n_req, weights=self._d_weight, rng=self._rng) if n_req \
            else np.zeros(0, dtype=np.int64)
        if eff.traffic_factor and n_req:
            arrivals, dep_i = self._surge(arrivals, dep_i, eff=eff, end=t0 + k_ticks * tick)
            n_req = len(arrivals)
        j_i = self._route(dep_i, live)
        k_i = np.clip(((arrivals.times - t0) / tick).astype(np.int64), 0, k_ticks - 1)

        carry = self._rep.queue  # replicas that do not serve in this chunk lose their queue
        self._rep.queue = np.zeros_like(carry)
        self._rep.concurrency = np.zeros_like(self._rep.concurrency)
        gpu_util = np.zeros((k_ticks, self.gpu_count))
        latency = np.zeros(n_req)
        ttft = np.zeros(n_req)
        served = j_i >= 0
        ok = served.copy()
        if live.size:
            jj = np.where(served, j_i, 0)
            served &= live.serving[jj]
            latency, ttft = self._run_replicas(live, arrivals=arrivals, j_i=jj, k_i=k_i,
                                               served=served, queue_before=carry[live.idx],
                                               gpu_util=gpu_util)
            ok = served & (latency <= self.config.request_timeout_s) & \
                (self._rng.random(n_req) >= live.error_rate[jj])
            gpu_i = np.where(served, live.gpu[jj], -1)
        else:
            gpu_i = np.full(n_req, -1, dtype=np.int64)
        self._account(k_ticks=k_ticks, k_i=k_i, dep_i=dep_i, ok=ok, served=served, gpu_i=gpu_i,
                      prompt=arrivals.prefill_tokens, output=arrivals.decode_tokens,
                      latency=latency, ttft=ttft)
        self._power(gpu_util, eff=eff)
        self._ticks += k_ticks

    def _surge(self, arrivals: Arrivals, dep_i: np.ndarray, *, eff: FaultEffects, end: float
               ) -> tuple[Arrivals, np.ndarray]:
        """Add copies of surging deployments' requests (factor f: f − 1 copies on average,
        each a little later within its tick), keeping arrivals sorted by time."""
        copies = np.zeros(len(arrivals), dtype=np.int64)
        for d, (_, model) in enumerate(self._d_keys):
            factor = eff.traffic_factor.get(model)
            if factor is None or factor <= 1.0:
                continue
            mine = np.flatnonzero(dep_i == d)
            extra = factor - 1.0
            copies[mine] = int(extra) + (self._rng.random(mine.size) < extra - int(extra))
        if not copies.any():
            return arrivals, dep_i
        src = np.repeat(np.arange(len(arrivals)), copies)
        times = np.minimum(arrivals.times[src] + self._rng.random(src.size) * self._tick_s,
                           np.nextafter(end, -np.inf))
        all_times = np.concatenate([arrivals.times, times])
        order = np.argsort(all_times, kind="stable")
        merged = Arrivals(all_times[order],
                          np.concatenate([arrivals.prefill_tokens,
                                          arrivals.prefill_tokens[src]])[order],
                          np.concatenate([arrivals.decode_tokens,
                                          arrivals.decode_tokens[src]])[order])
        return merged, np.concatenate([dep_i, dep_i[src]])[order]

    def _live_replicas(self, t0: float, eff: FaultEffects) -> _Live:
        """Replicas with endpoints in this chunk: Running ones, and failed ones whose
        endpoints readiness probes have not removed yet (requests sent there fail)."""
        live: list[int] = []
        serving: list[bool] = []
        grace = self.config.endpoint_grace_s
        for p in self._pods.values():
            if p.replica < 0 or p.ready_at is None or p.node in eff.not_ready_nodes:
                continue
            if p.failed_at is None and p.ready_at <= t0:
                live.append(p.replica)
                serving.append(True)
            elif p.failed_at is not None and p.ready_at <= p.failed_at < t0 + grace:
                live.append(p.replica)
                serving.append(False)
        idx = np.array(live, dtype=np.int64)
        rep = self._rep
        gpu = rep.gpu[idx]
        nodes = [self._g_node[g] for g in gpu]
        return _Live(idx=idx, serving=np.array(serving, dtype=bool), gpu=gpu,
                     deployment=rep.deployment[idx], share=rep.share[idx],
                     params=rep.params[idx],
                     latency_factor=np.array([eff.latency_factor.get(n, 1.0) for n in nodes]),
                     error_rate=np.array([eff.error_rate.get(n, 0.0) for n in nodes]))

    def _route(self, dep_i: np.ndarray, live: _Live) -> np.ndarray:
        """Each request goes to a live replica of its deployment, chosen uniformly (as a
        Service does); -1 where the deployment has none."""
        n_req = dep_i.size
        if not live.size or not n_req:
            return np.full(n_req, -1, dtype=np.int64)
        order = np.argsort(live.deployment, kind="stable")
        per_dep = np.bincount(live.deployment, minlength=len(self._d_keys))
        first = np.cumsum(per_dep) - per_dep
        available = per_dep[dep_i]
        pick = first[dep_i] + np.floor(self._rng.random(n_req) * available).astype(np.int64)
        return np.where(available > 0, order[np.minimum(pick, live.size - 1)], -1)

    def _run_replicas(self, live: _Live, *, arrivals: Arrivals, j_i: np.ndarray,
                      k_i: np.ndarray, served: np.ndarray, queue_before: np.ndarray,
                      gpu_util: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every tick of every live replica at once; returns each request's latency and TTFT.

        Writes the GPUs' utilization per tick into ``gpu_util`` and leaves each replica's
        queue, concurrency, mean work and prefill fraction in ``self._rep``.
        """
        tick, rep, n_live = self._tick_s, self._rep, live.size
        k_ticks = gpu_util.shape[0]
        k1, k2, k3, k4, k5, kp, bmax = (live.params[:, i] for i in range(7))
        share = live.share
        k = {"k1": k1, "k2": k2, "k3": k3, "k4": k4, "k5": k5}
        prompt, output = arrivals.prefill_tokens, arrivals.decode_tokens

        # Work of each request, in seconds of a saturated slice: prefill + decode at full batch.
        t_full = iteration_time(bmax, share, **k)
        pre_s = prompt * (kp / (share + k4))[j_i]
        work = pre_s + output * (t_full / bmax)[j_i]
        on = j_i[served]
        offered = np.bincount(k_i[served] * n_live + on, weights=work[served],
                              minlength=k_ticks * n_live).reshape(k_ticks, n_live)
        count = np.bincount(on, minlength=n_live)
        work_sum = np.bincount(on, weights=work[served], minlength=n_live)
        pre_sum = np.bincount(on, weights=pre_s[served], minlength=n_live)
        seen = count > 0
        idx = live.idx
        rep.mean_work[idx] = np.where(seen, work_sum / np.maximum(count, 1), rep.mean_work[idx])
        pre_frac = np.where(seen, pre_sum / np.maximum(work_sum, 1e-12), rep.prefill_frac[idx])
        rep.prefill_frac[idx] = pre_frac

        # Queues: the Lindley recursion q_k = max(0, q_{k−1} + offered_k − capacity_k), all ticks
        # at once through cumulative sums. Capacity depends on the co-runner slowdown, which
        # depends on which clients are active (offered work or a queue): two passes settle it.
        q0 = np.where(live.serving, queue_before, 0.0)
        gpus_used, g_local = np.unique(live.gpu, return_inverse=True)
        n_gpu = gpus_used.size
        kg = (np.arange(k_ticks)[:, None] * n_gpu + g_local[None, :]).ravel()
        slow = self.perf.co_runner_slowdown

        def queues(active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            per_gpu = np.bincount(kg, weights=active.ravel().astype(np.float64),
                                  minlength=k_ticks * n_gpu).reshape(k_ticks, n_gpu)
            m = (1.0 + slow * (per_gpu[:, g_local] - active)) * live.latency_factor
            s = np.cumsum(offered - tick / m, axis=0)
            return m, np.maximum(s - np.minimum(-q0, np.minimum.accumulate(s, axis=0)), 0.0)

        active = offered > 0
        active[0] |= q0 > 0
        m, q = queues(active)
        q_before = np.vstack([q0[None, :], q[:-1]])
        settled = (offered > 0) | (q_before > 0)
        if not np.array_equal(active, settled):
            m, q = queues(settled)
            q_before = np.vstack([q0[None, :], q[:-1]])
        done = (offered + q_before - q) / tick  # saturated-slice seconds served per second
        rho = np.minimum(done * m, 1.0)

        # Latency responds to the load of the last few seconds, not of one tick: a long
        # prompt fills its own tick but does not slow its own decode for long.
        window = self._load_window
        history = np.vstack([rep.recent[:, idx], done])
        sums = np.vstack([np.zeros((1, n_live)), np.cumsum(history, axis=0)])
        recent = (sums[window:] - sums[:-window]) / window
        rep.recent[:] = 0.0
        rep.recent[:, idx] = history[history.shape[0] - (window - 1):]
        f_p = np.minimum(np.minimum(recent * m, 1.0) * pre_frac, _MAX_PREFILL)
        decode_rate = recent * (1.0 - pre_frac) * (bmax / t_full) / (1.0 - f_p)
        conc = np.where(live.serving,
                        solve_concurrency(decode_rate, share, slowdown=m, max_batch=bmax, **k),
                        0.0)
        wait = 0.5 * (q_before + q) * m
        step = m * iteration_time(np.maximum(conc, 1.0), share, **k)
        stretch = 1.0 / (1.0 - f_p)

        # Utilization: thread share × the fraction of the slice's peak throughput in use.
        busy = np.where(live.serving, share * rho, 0.0)
        per_gpu = np.bincount(kg, weights=busy.ravel(),
                              minlength=k_ticks * n_gpu).reshape(k_ticks, n_gpu)
        gpu_util[:, gpus_used] = np.minimum(per_gpu, 1.0)
        rep.queue[idx] = np.where(live.serving, q[-1], 0.0)
        rep.concurrency[idx] = conc[-1] + np.where(live.serving, f_p[-1], 0.0)

        step_i = step[k_i, j_i]
        ttft = wait[k_i, j_i] + m[k_i, j_i] * pre_s + step_i
        latency = ttft + np.maximum(output - 1, 0) * step_i * stretch[k_i, j_i]
        return latency, ttft

    def _power(self, gpu_util: np.ndarray, *, eff: FaultEffects) -> None:
        """Power and energy per GPU (a failed GPU draws nothing); smoothed readings."""
        k_ticks = gpu_util.shape[0]
        watts = power_w(gpu_util, idle_w=self._g_idle, tdp_w=self._g_tdp)
        watts[:, self._failed_rows(eff)] = 0.0
        self._g_energy += watts.sum(axis=0) * self._tick_s
        tau = self.config.util_smoothing_s
        alpha = 1.0 if tau <= 0 else 1.0 - math.exp(-self._tick_s / tau)
        decay = alpha * (1.0 - alpha) ** np.arange(k_ticks - 1, -1, -1)
        carry = (1.0 - alpha) ** k_ticks
        self._g_util = carry * self._g_util + decay @ gpu_util
        self._g_power = carry * self._g_power + decay @ watts

    def _failed_rows(self, eff: FaultEffects) -> np.ndarray:
        failed = np.zeros(self.gpu_count, dtype=bool)
        for key in eff.failed_gpus:
            row = self._row_of.get(key)
            if row is not None:
                failed[row] = True
        return failed

    def _ring_rows(self, k_ticks: int) -> np.ndarray:
        return (self._ticks + np.arange(k_ticks)) % self._ring_len

    def _hist_slots(self, k_ticks: int) -> tuple[int, int]:
        """Zero the histogram slots this chunk enters; returns (first, count)."""
        first = self._ticks // self._ticks_per_hslot
        last = (self._ticks + k_ticks - 1) // self._ticks_per_hslot
        for h in range(max(first, self._hist_zeroed + 1), last + 1):
            slot = h % self._hist_len
            self._h_e2e[slot] = 0
            self._h_e2e_sum[slot] = 0.0
            self._h_ttft[slot] = 0
        self._hist_zeroed = max(self._hist_zeroed, last)
        return first, last - first + 1

    def _account(self, *, k_ticks: int, k_i: np.ndarray, dep_i: np.ndarray, ok: np.ndarray,
                 served: np.ndarray, gpu_i: np.ndarray, prompt: np.ndarray,
                 output: np.ndarray, latency: np.ndarray, ttft: np.ndarray) -> None:
        n_dep = len(self._d_keys)
        self._c_requests += np.bincount(dep_i, minlength=n_dep)
        self._c_success += np.bincount(dep_i[ok], minlength=n_dep)
        self._c_prompt += np.bincount(dep_i[served], weights=prompt[served],
                                      minlength=n_dep).astype(np.int64)
        self._c_gen += np.bincount(dep_i[ok], weights=output[ok],
                                   minlength=n_dep).astype(np.int64)
        rows = self._ring_rows(k_ticks)
        cell = k_i * n_dep + dep_i
        size = k_ticks * n_dep
        self._r_req[rows] = np.bincount(cell, minlength=size).reshape(k_ticks, n_dep)
        self._r_ok[rows] = np.bincount(cell[ok], minlength=size).reshape(k_ticks, n_dep)
        self._r_gen[rows] = np.bincount(cell[ok], weights=output[ok],
                                        minlength=size).reshape(k_ticks, n_dep).astype(np.int64)
        on_gpu = gpu_i >= 0
        self._r_gpu[rows] = np.bincount(k_i[on_gpu] * self.gpu_count + gpu_i[on_gpu],
                                        minlength=k_ticks * self.gpu_count
                                        ).reshape(k_ticks, self.gpu_count)

        first, n_slots = self._hist_slots(k_ticks)
        d_ok, lat, first_tok = dep_i[ok], latency[ok], ttft[ok]
        h_local = (self._ticks + k_i[ok]) // self._ticks_per_hslot - first
        slots = (first + np.arange(n_slots)) % self._hist_len
        nb = _E2E.size + 1
        b = np.searchsorted(_E2E, lat, side="left")
        self._c_e2e += np.bincount(d_ok * nb + b, minlength=n_dep * nb).reshape(n_dep, nb)
        self._c_e2e_sum += np.bincount(d_ok, weights=lat, minlength=n_dep)
        self._h_e2e[slots] += np.bincount((h_local * n_dep + d_ok) * nb + b,
                                          minlength=n_slots * n_dep * nb
                                          ).reshape(n_slots, n_dep, nb)
        self._h_e2e_sum[slots] += np.bincount(h_local * n_dep + d_ok, weights=lat,
                                              minlength=n_slots * n_dep).reshape(n_slots, n_dep)
        nt = _TTFT.size + 1
        bt = np.searchsorted(_TTFT, first_tok, side="left")
        self._c_ttft += np.bincount(d_ok * nt + bt, minlength=n_dep * nt).reshape(n_dep, nt)
        self._c_ttft_sum += np.bincount(d_ok, weights=first_tok, minlength=n_dep)
        self._h_ttft[slots] += np.bincount((h_local * n_dep + d_ok) * nt + bt,
                                           minlength=n_slots * n_dep * nt
                                           ).reshape(n_slots, n_dep, nt)

    # ======================================================================================
    # Telemetry
    # ======================================================================================
    def _window_sum(self, ring: np.ndarray, seconds: float) -> tuple[np.ndarray, float]:
        """Sum of the last ``seconds`` of completed ticks, and the seconds covered."""
        n = min(round(seconds / self._tick_s), self._ticks, self._ring_len - 1)
        if n <= 0:
            return np.zeros(ring.shape[1:], dtype=ring.dtype), 0.0
        rows = (self._ticks - 1 - np.arange(n)) % self._ring_len
        return ring[rows].sum(axis=0), n * self._tick_s

    def _telemetry(self, now: float, eff: FaultEffects) -> FleetTelemetry:
        held = self._held_by_row()
        n_dep = len(self._d_keys)
        qps: dict[int, np.ndarray] = {}
        for window in (60, 300, 900, 3600):
            total, covered = self._window_sum(self._r_req, window)
            qps[window] = total / covered if covered else np.zeros(n_dep)
        req5, _ = self._window_sum(self._r_req, 300)
        ok5, _ = self._window_sum(self._r_ok, 300)
        gen1, covered1 = self._window_sum(self._r_gen, 60)
        gpu_req, gpu_cov = self._window_sum(self._r_gpu, 60)
        if self._ticks > 0:
            current = (self._ticks - 1) // self._ticks_per_hslot
            back = min(self._hist_window, current + 1)
            slots = (current - np.arange(back)) % self._hist_len
            e2e5 = self._h_e2e[slots].sum(axis=0)
            e2e5_sum = self._h_e2e_sum[slots].sum(axis=0)
            ttft5 = self._h_ttft[slots].sum(axis=0)
        else:
            e2e5 = np.zeros((n_dep, _E2E.size + 1), dtype=np.int64)
            e2e5_sum = np.zeros(n_dep)
            ttft5 = np.zeros((n_dep, _TTFT.size + 1), dtype=np.int64)

        running_pods: dict[int, list[_Pod]] = {}
        for p in self._pods.values():
            if p.deployment >= 0 and self._phase(p, now=now, eff=eff) is PodPhase.RUNNING:
                running_pods.setdefault(p.deployment, []).append(p)
        alive, rep = self._rep_alive, self._rep
        queued = np.where(alive, rep.queue / np.maximum(rep.mean_work, 1e-9), 0.0)
        waiting = np.bincount(rep.deployment, weights=queued, minlength=n_dep)
        in_service = np.bincount(rep.deployment, weights=np.where(alive, rep.concurrency, 0.0),
                                 minlength=n_dep)

        deployments = []
        for d, (namespace, model) in enumerate(self._d_keys):
            total5 = int(req5[d])
            count5 = int(e2e5[d].sum())
            p99 = histogram_quantile(0.99, bounds=E2E_LATENCY_BUCKETS_S, counts=e2e5[d].tolist())
            p50_ttft = histogram_quantile(0.5, bounds=TTFT_BUCKETS_S, counts=ttft5[d].tolist())
            pods = running_pods.get(d, [])
            deployments.append(DeploymentTelemetry(
                model=model, namespace=namespace, replicas=len(pods),
                qps_1m=float(qps[60][d]), qps_5m=float(qps[300][d]),
                qps_15m=float(qps[900][d]), qps_1h=float(qps[3600][d]),
                success_rate=int(ok5[d]) / total5 if total5 else None,
                p99_latency_ms=None if p99 is None else p99 * 1000.0,
                mean_latency_ms=float(e2e5_sum[d]) / count5 * 1000.0 if count5 else None,
                ttft_p50_ms=None if p50_ttft is None else p50_ttft * 1000.0,
                queue_waiting=round(float(waiting[d])), running=round(float(in_service[d])),
                tokens_per_s=float(gen1[d]) / covered1 if covered1 else 0.0,
                nodes=tuple(sorted({p.node for p in pods})),
                counters=self._counters(d)))
        deployments.sort(key=lambda t: (t.namespace, t.model))

        gpus = []
        failed = self._failed_rows(eff)
        cost = Decimal(0)
        idle_cost = Decimal(0)
        throughput = 0.0
        power_total = 0.0
        for row in range(self.gpu_count):
            node, index = self._g_node[row], self._g_index[row]
            if node in eff.not_ready_nodes:
                continue  # an unreachable node's exporter returns nothing
            usable = eff.gpu_usable(node, index)
            util = 0.0 if failed[row] else float(np.clip(self._g_util[row], 0.0, 1.0))
            watts = 0.0 if failed[row] else float(self._g_power[row])
            pods = held.get(row, [])
            used = int(self._g_other_mem[row]) + sum(p.memory_mib for p in pods)
            gpus.append(GpuTelemetry(
                node=node, gpu_index=index, gpu_type=self._g_type[row], uuid=self._g_uuid[row],
                utilization=round(util, 4), power_w=round(watts, 1), memory_used_mib=used,
                memory_total_mib=int(self._g_mem_total[row]), energy_j=float(self._g_energy[row]),
                healthy=usable,
                qps_1m=float(gpu_req[row]) / gpu_cov if gpu_cov else 0.0))
            power_total += watts
            throughput += float(self._g_tops[row]) * round(util, 4)
            if pods:
                share = Decimal(min(100, sum(p.thread_pct for p in pods))) / 100
                price = self._g_price[row]
                energy = Decimal(f"{watts:.3f}") / 1000 * self._catalog.electricity_per_kwh
                cost += price * share + energy
                idle_cost += price * (1 - share)
        fleet_qps = float(sum(d.qps_1m for d in deployments))
        per_inference = None
        if fleet_qps > 0:
            per_inference = (cost / Decimal(f"{fleet_qps * 3600:.6f}")).quantize(
                _NANO, rounding=ROUND_HALF_EVEN)
        all_req, all_ok = int(req5.sum()), int(ok5.sum())
        totals = FleetTotals(
            qps=fleet_qps, power_w=round(power_total, 1),
            cost_per_hour=cost.quantize(_CENT, rounding=ROUND_HALF_EVEN),
            idle_cost_per_hour=idle_cost.quantize(_CENT, rounding=ROUND_HALF_EVEN),
            cost_per_inference=per_inference,
            tops_per_w=throughput / power_total if power_total > 0 else 0.0,
            success_rate=all_ok / all_req if all_req else None,
            queue_waiting=sum(d.queue_waiting for d in deployments))
        return FleetTelemetry(timestamp=now, gpus=tuple(gpus), deployments=tuple(deployments),
                              totals=totals, source="twin")

    def _counters(self, d: int) -> DeploymentCounters:
        requests, success = int(self._c_requests[d]), int(self._c_success[d])
        return DeploymentCounters(
            requests_total=requests, success_total=success, failure_total=requests - success,
            prompt_tokens_total=int(self._c_prompt[d]),
            generation_tokens_total=int(self._c_gen[d]),
            e2e_latency=Histogram(E2E_LATENCY_BUCKETS_S, tuple(int(c) for c in self._c_e2e[d]),
                                  float(self._c_e2e_sum[d])),
            ttft=Histogram(TTFT_BUCKETS_S, tuple(int(c) for c in self._c_ttft[d]),
                           float(self._c_ttft_sum[d])))


# ==========================================================================================
# Fleets
# ==========================================================================================
def fleet_from_settings(settings: Settings, *, seed: int = 0) -> tuple[Node, ...]:
    """The fleet the settings describe: SPEC §2's default layout for 4 H100 + 8 A100
    nodes of one GPU each, otherwise a generated fleet with those counts."""
    counts = dict(settings.fleet.nodes_per_type)
    if counts == {"H100": 4, "A100": 8} and settings.fleet.gpus_per_node == 1:
        return default_fleet(settings.catalog, settings.classes)
    return generate_fleet(settings.catalog, settings.classes, nodes_per_type=counts,
                          gpus_per_node=settings.fleet.gpus_per_node, seed=seed)


# Sizes (GB) of the generated fleet's models, per class; model k has size sizes[k % len].
_GENERATED_SIZES: Mapping[WorkloadClass, tuple[float, ...]] = MappingProxyType({
    WorkloadClass.TINY: (1.1, 2.0, 2.5, 3.5),
    WorkloadClass.MEDIUM: (7.0, 8.0, 13.0, 15.5),
    WorkloadClass.LARGE: (26.0, 34.0, 38.0),
})
# What fills a shared GPU in a generated fleet (classes of the servers placed on it).
_SHARED_PATTERNS: tuple[tuple[WorkloadClass, ...], ...] = (
    (WorkloadClass.MEDIUM,),
    (WorkloadClass.MEDIUM, WorkloadClass.MEDIUM),
    (WorkloadClass.MEDIUM, WorkloadClass.TINY),
    (WorkloadClass.MEDIUM, WorkloadClass.TINY, WorkloadClass.TINY),
    (WorkloadClass.TINY, WorkloadClass.TINY, WorkloadClass.TINY),
)


def generate_fleet(
    catalog: Catalog,
    classes: ClassRules,
    *,
    nodes_per_type: Mapping[str, int],
    gpus_per_node: int = 1,
    models_per_class: int = 8,
    occupancy: float = 0.8,
    seed: int = 0,
) -> tuple[Node, ...]:
    """A reproducible fleet of any size with model servers placed on it.

    Each class has ``models_per_class`` models (deployments); a GPU hosts one
    large model (on the largest GPU type), a mix of medium and tiny ones, or
    nothing (probability ``1 − occupancy``). Slices never over-commit a GPU.
    All nodes start healthy, ready and schedulable, at idle.
    """
    if gpus_per_node < 1:
        raise ValidationError("fleet.gpus_per_node", "must be ≥ 1")
    if models_per_class < 1:
        raise ValidationError("fleet.models_per_class", "must be ≥ 1")
    if not 0.0 <= occupancy <= 1.0:
        raise ValidationError("fleet.occupancy", "must be within [0, 1]")
    rng = random.Random(seed)
    biggest = max(catalog.names, key=lambda n: catalog[n].memory_mib)
    replicas: dict[str, int] = {}
    nodes = []
    for gpu_type in sorted(nodes_per_type):
        count = nodes_per_type[gpu_type]
        spec = catalog[gpu_type]
        for n in range(count):
            name = f"{gpu_type.lower()}-{n}"
            gpus = []
            for g in range(gpus_per_node):
                wanted: tuple[WorkloadClass, ...] = ()
                if rng.random() < occupancy:
                    if gpu_type == biggest and rng.random() < 0.7:
                        wanted = (WorkloadClass.LARGE,)
                    else:
                        wanted = rng.choice(_SHARED_PATTERNS)
                slices: list[MpsSlice] = []
                free_share, free_mem = 100, spec.memory_mib
                for wc in wanted:
                    k = rng.randrange(models_per_class)
                    sizes = _GENERATED_SIZES[wc]
                    gb = sizes[k % len(sizes)]
                    model = f"llm-{wc.value}-{k:02d}"
                    policy = classes.classify(gb)
                    mib = gb_to_mib(gb)
                    if policy.share_pct > free_share or mib > free_mem:
                        continue
                    replicas[model] = replicas.get(model, -1) + 1
                    slices.append(MpsSlice(owner=f"{model}-{replicas[model]}",
                                           thread_pct=policy.share_pct, memory_mib=mib,
                                           model=model, workload_class=policy.workload_class))
                    free_share -= policy.share_pct
                    free_mem -= mib
                gpus.append(Gpu(index=g, gpu_type=gpu_type, memory_total_mib=spec.memory_mib,
                                utilization=0.0, power_w=spec.idle_w, slices=tuple(slices),
                                uuid=f"GPU-{name}-{g}"))
            nodes.append(Node(name=name, gpus=tuple(gpus),
                              labels={"nvidia.com/gpu.product": gpu_type,
                                      HOSTNAME_LABEL: name}))
    return tuple(nodes)


# ==========================================================================================
# Helpers
# ==========================================================================================


