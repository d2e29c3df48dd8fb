"""Placement quality on the digital twin: replay traffic under one placement policy.

Why: the feedback loop scores candidate scheduler weights on recent traffic,
and the placement-quality bench compares the scheduler with baseline
policies. Both need the same harness: the twin serving the traffic, replicas
that follow the load, and every new replica placed by the policy under test.

How a run goes. The fleet starts empty (slices the given nodes carry are
dropped); the starting replicas (``min_replicas`` of every deployment, and
with ``warm_start`` as many more as the scaling rule wants for the period's
average traffic — how an operator sizes deployments from history) are placed
by the policy and bound one startup delay before ``start``, so they are
Running when the measured period begins (nothing before ``start`` counts). Then, every
``control_interval_s``, the twin advances, the cost of the interval is booked
and the autoscaler acts; each replica it adds is placed by the policy over a
fresh snapshot of the twin's nodes and bound as the rendered Pod, exactly as
the controller's placement worker does.

Autoscaling is a *capacity-target* rule, the same for every policy, so that
a comparison isolates placement (SPEC §3.6's queue/efficiency rule is not
used: with the catalog's figures its efficiency condition never holds). Per
deployment, the wanted capacity is ``rate / target_utilization +
queue / drain_s`` requests/s, where ``rate`` is the arrival rate over the
last ``rate_window_s`` and ``queue`` the requests waiting. A replica's
capacity is the perf model's saturated throughput for the deployment's
current mean request on that replica's GPU type, MPS share and co-runners.
Like the Kubernetes HPA's stabilization windows, scale-up acts on the lowest
wanted capacity of the last ``up_window_s`` (0: the latest reading) and
scale-down on the highest of the last ``down_window_s`` (SPEC §3.6's
300 s). Scale-up adds one replica at a time until the capacity (Pending
replicas included) covers the target; scale-down removes the least valuable
replica (lowest capacity per dollar, newest first on ties) while what remains
still covers its target.

Cost is SPEC §3.8 integrated over time: for every interval, each GPU hosting
at least one replica (Pending ones included: they hold the GPU) costs its
GPU-hour price × the share of SM threads held plus the energy it drew
(its energy counter's increase) × the electricity price; a GPU hosting
nothing costs nothing. SLA attainment counts requests whose end-to-end
latency is within their deployment's SLA (read from the latency histogram;
an SLA that is not a bucket bound is interpolated inside its bucket), over
every request that arrived: failed and timed-out requests are misses.

Invariants: pure (no I/O; no wall clock — decisions/s is measured only when
the caller injects a timer); the same inputs and seed give the same result;
every replica the harness binds passed the policy's filters and the twin's
own over-commit check.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

import numpy as np

from core.autoscale import AutoscalePolicy
from core.clock import ManualClock
from core.errors import ValidationError
from core.manifest import render_pod
from core.model import Node, PlacementRequest, Priority, SchedulerWeights, WorkloadClass
from core.placement.baselines import PlacementPolicy
from core.placement.framework import Scheduler
from core.placement.snapshot import FleetSnapshot
from core.settings import Settings
from core.sim.perf_model import PerfModel
from core.sim.trace import Trace, TraceReplay
from core.sim.traffic import ArrivalSource
from core.sim.twin import Twin, TwinConfig, fleet_from_settings
from core.telemetry import E2E_LATENCY_BUCKETS_S, FleetTelemetry, Histogram

_J_PER_KWH = Decimal(3_600_000)
_PCT_SECONDS_PER_GPU_HOUR = Decimal(360_000)  # 100 % × 3600 s


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model deployment whose replicas the harness scales and the policy places."""

    name: str  # model name: a DNS label, unique among the deployments
    memory_gb: float
    traffic_weight: float  # relative share of the requests
    sla_s: float  # end-to-end latency SLA
    priority: Priority = Priority.MEDIUM
    namespace: str = "default"

    def __post_init__(self) -> None:
        if not math.isfinite(self.traffic_weight) or self.traffic_weight < 0:
            raise ValidationError(f"deployments.{self.name}.traffic_weight", "must be ≥ 0")
        if not math.isfinite(self.sla_s) or self.sla_s <= 0:
            raise ValidationError(f"deployments.{self.name}.sla_s", "must be > 0")

    def request(self, request_id: str) -> PlacementRequest:
        return PlacementRequest(model_name=self.name, model_memory_gb=self.memory_gb,
                                priority=self.priority, latency_sla_ms=self.sla_s * 1000.0,
                                namespace=self.namespace, request_id=request_id)


@dataclass(frozen=True, slots=True)
class ScalingRule:
    """The capacity-target autoscaler every policy is evaluated with (see the module doc)."""

    target_utilization: float = 0.6
    rate_window_s: float = 30.0
    drain_s: float = 60.0
    up_window_s: float = 0.0
    down_window_s: float = AutoscalePolicy().down_stabilization_s
    min_replicas: int = max(1, AutoscalePolicy().min_replicas)
    max_replicas: int = 64
    control_interval_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization <= 1:
            raise ValidationError("scaling.target_utilization", "must be within (0, 1]")
        for name in ("rate_window_s", "drain_s", "control_interval_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValidationError(f"scaling.{name}", "must be a number > 0")
        for name in ("up_window_s", "down_window_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValidationError(f"scaling.{name}", "must be a number ≥ 0")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValidationError("scaling.max_replicas", "must be ≥ min_replicas ≥ 1")


@dataclass(frozen=True, slots=True)
class DeploymentResult:
    name: str
    sla_s: float
    requests: int
    succeeded: int
    within_sla: int
    mean_replicas: float
    peak_replicas: int

    @property
    def sla_attainment(self) -> float:
        return self.within_sla / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class PolicyResult:
    """One policy's replay. Money in US dollars (``Decimal``); energy in joules."""

    policy: str
    duration_s: float
    window_s: float
    requests: int  # every request that arrived
    succeeded: int
    within_sla: int
    cost: Decimal
    gpu_cost: Decimal  # price × share held
    energy_cost: Decimal
    energy_j: float  # drawn by GPUs hosting replicas
    mean_gpus: float  # GPUs hosting ≥ 1 replica, time-averaged
    peak_gpus: int
    decisions: int
    placement_failures: int  # decisions that found no GPU
    decide_s: float | None  # time inside the policy's decide (None without a timer)
    window_costs: tuple[Decimal, ...]
    # Per window × deployment, for lower bounds: arrivals, successes and their tokens.
    window_requests: np.ndarray = field(repr=False)
    window_prompt_tokens: np.ndarray = field(repr=False)
    window_output_tokens: np.ndarray = field(repr=False)
    window_succeeded: np.ndarray = field(repr=False)
    window_within_sla: np.ndarray = field(repr=False)
    # Per window × deployment × GPU type (catalog order): slices held, time-averaged, each
    # counted as 1 / its co-runner slowdown (the capacity they offer, in slices' worth).
    window_capacity: np.ndarray = field(repr=False)
    deployments: tuple[Deployment, ...] = ()
    per_deployment: tuple[DeploymentResult, ...] = ()
    # GPU-hours held (share × time) per GPU type.
    share_hours: Mapping[str, float] = field(default_factory=dict)

    @property
    def cost_per_1k(self) -> Decimal | None:
        """Dollars per 1,000 successful inferences; None when nothing succeeded."""
        return None if not self.succeeded else self.cost * 1000 / self.succeeded

    @property
    def cost_per_1k_within_sla(self) -> Decimal | None:
        """Dollars per 1,000 inferences that met their SLA (misses are paid, not counted)."""
        return None if not self.within_sla else self.cost * 1000 / self.within_sla

    @property
    def energy_per_inference_j(self) -> float | None:
        return None if not self.succeeded else self.energy_j / self.succeeded

    @property
    def sla_attainment(self) -> float:
        return self.within_sla / self.requests if self.requests else 1.0

    @property
    def decisions_per_s(self) -> float | None:
        if self.decide_s is None or self.decisions == 0:
            return None
        return self.decisions / max(self.decide_s, 1e-9)


# ======================================================================================
# Deployments and SLAs
# ======================================================================================
def unloaded_latency_s(perf: PerfModel, workload_class: WorkloadClass, gpu_type: str, *,
                       share: float, prompt_tokens: np.ndarray, output_tokens: np.ndarray
                       ) -> np.ndarray:
    """End-to-end latency of each request alone on an idle slice (no queue, batch 1)."""
    p = perf.params_for(workload_class, gpu_type)
    prompt = np.asarray(prompt_tokens, dtype=np.float64)
    output = np.asarray(output_tokens, dtype=np.float64)
    return prompt * p.kp / (share + p.k4) + np.maximum(output, 1.0) * p.iteration_s(1.0, share)


def latency_sla_s(settings: Settings, perf: PerfModel, *, memory_gb: float,
                  prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                  quantile: float = 0.99, multiplier: float = 2.0) -> float:
    """A deployment's SLA: ``multiplier`` × the ``quantile`` of unloaded latency on the
    slowest GPU type able to hold it, rounded up to the next latency-histogram bound
    (so attainment is read exactly from the histogram vLLM exports)."""
    policy = settings.classes.classify(memory_gb)
    need_mib = memory_gb * 1024
    types = [t for t in settings.catalog.names
             if (not policy.allowed_types or t in policy.allowed_types)
             and settings.catalog[t].memory_mib >= need_mib]
    if not types:
        raise ValidationError("memory_gb", f"{memory_gb:g} GB fits no GPU type in the catalog")
    if len(prompt_tokens) == 0:
        raise ValidationError("traffic", "needs at least one request to size an SLA")
    worst = max(float(np.quantile(unloaded_latency_s(
        perf, policy.workload_class, t, share=policy.share_pct / 100.0,
        prompt_tokens=prompt_tokens, output_tokens=output_tokens), quantile)) for t in types)
    raw = multiplier * worst
    return next((b for b in E2E_LATENCY_BUCKETS_S if b >= raw - 1e-12), raw)


# Three deployments of different sizes, one per workload class (name, GB, share of the
# requests, priority): a ~1.5 B completion model in fp16, a 7 B model in fp16 and a 70 B
# model quantized to 4 bits (AWQ), the kind of mix a code-assistant service runs.
STANDARD_MODELS: tuple[tuple[str, float, float, Priority], ...] = (
    ("coder-1b5", 3.0, 0.6, Priority.MEDIUM),
    ("coder-7b", 14.0, 0.3, Priority.MEDIUM),
    ("coder-70b-awq", 38.0, 0.1, Priority.HIGH),
)


def standard_deployments(settings: Settings, *, prompt_tokens: np.ndarray,
                         output_tokens: np.ndarray, perf: PerfModel | None = None,
                         sla_multiplier: float = 2.0) -> tuple[Deployment, ...]:
    """``STANDARD_MODELS`` with SLAs sized by ``latency_sla_s`` on the given request sizes."""
    perf = perf or PerfModel.for_catalog(settings.catalog)
    return tuple(
        Deployment(name=name, memory_gb=gb, traffic_weight=weight, priority=priority,
                   sla_s=latency_sla_s(settings, perf, memory_gb=gb, prompt_tokens=prompt_tokens,
                                       output_tokens=output_tokens, multiplier=sla_multiplier))
        for name, gb, weight, priority in STANDARD_MODELS)


def empty_fleet(nodes: Sequence[Node], settings: Settings) -> tuple[Node, ...]:
    """The same nodes with no model servers, idle."""
    return tuple(replace(n, gpus=tuple(
        replace(g, slices=(), utilization=0.0, power_w=settings.catalog[g.gpu_type].idle_w)
        for g in n.gpus)) for n in nodes)


# ======================================================================================
# The harness
# ======================================================================================
@dataclass(slots=True)
class _Replica:
    deployment: int
    owner: str
    pod_name: str
    gpu: tuple[str, int]
    gpu_type: str
    share_pct: int
    created_at: float


class _Run:
    """One replay: the twin, the replicas the harness manages, and the books."""

    def __init__(self, settings: Settings, *, policy: PlacementPolicy, traffic: ArrivalSource,
                 deployments: Sequence[Deployment], nodes: Sequence[Node], start: float,
                 seed: int, rule: ScalingRule, perf: PerfModel,
                 twin_config: TwinConfig | None,
                 timer: Callable[[], float] | None,
                 initial_rps: Sequence[float] | None = None,
                 initial_tokens: tuple[float, float] | None = None) -> None:
        self.settings = settings
        self.catalog = settings.catalog
        self.policy = policy
        self.deps = tuple(deployments)
        self.rule = rule
        self.perf = perf
        self.timer = timer
        base = twin_config or TwinConfig()
        self.config = replace(base, seed=seed,
                              traffic_weights={d.name: d.traffic_weight for d in self.deps})
        warmup = self.config.startup_delay_s + self.config.tick_s
        self.clock = ManualClock(start - warmup)
        fleet = empty_fleet(nodes, settings)
        self.twin = Twin(settings, clock=self.clock, nodes=fleet, traffic=traffic, perf=perf,
                         config=self.config)
        self.gpu_keys = [(n.name, g.index) for n in fleet for g in n.gpus]
        self.gpu_types = [g.gpu_type for n in fleet for g in n.gpus]
        self.gpu_row = {k: i for i, k in enumerate(self.gpu_keys)}
        self.classes = [settings.classes.classify(d.memory_gb) for d in self.deps]
        self.replicas: list[_Replica] = []
        self.serial = 0
        self.decisions = 0
        self.failures = 0
        self.decide_s = 0.0
        # Mean request of each deployment (prompt, output tokens), learned from counters.
        ref = initial_tokens or (float(self.config.reference_prompt_tokens),
                                 float(self.config.reference_output_tokens))
        self.tokens = [ref for _ in self.deps]
        self.counter_history: list[deque[tuple[float, np.ndarray]]] = [deque() for _ in self.deps]
        self.wanted_history: list[deque[tuple[float, float]]] = [deque() for _ in self.deps]

        snapshot = self._snapshot()
        for d in sorted(range(len(self.deps)), key=lambda i: -self.deps[i].memory_gb):
            for _ in range(rule.min_replicas):
                self._add_replica(d, snapshot)
        if initial_rps is not None:
            self._scale_up([rps / rule.target_utilization for rps in initial_rps], snapshot)
        self.twin.step(warmup)

    # -- placement ---------------------------------------------------------------------
    def _snapshot(self) -> FleetSnapshot:
        return FleetSnapshot(self.twin.nodes(), self.catalog,
                             max_clients=self.settings.placement.max_mps_clients_per_gpu)

    def _add_replica(self, d: int, snapshot: FleetSnapshot) -> bool:
        dep = self.deps[d]
        self.serial += 1
        request = dep.request(f"r{self.serial}")
        t0 = self.timer() if self.timer else 0.0
        choice = self.policy.decide(request, snapshot)
        if self.timer:
            self.decide_s += self.timer() - t0
        self.decisions += 1
        if choice.row is None or choice.node is None or choice.gpu_index is None:
            self.failures += 1
            return False
        sl = choice.mps_slice()
        snapshot.reserve(choice.row, sl)
        pod = render_pod(request=request, node=choice.node, gpu_index=choice.gpu_index,
                         mps_slice=sl, workload_class=choice.workload_class,
                         weight_version=choice.weight_version,
                         gpu_memory_total_mib=int(snapshot.mem_total[choice.row]))
        self.twin.bind(pod)
        self.replicas.append(_Replica(
            deployment=d, owner=sl.owner, pod_name=pod["metadata"]["name"],
            gpu=(choice.node, choice.gpu_index), gpu_type=snapshot.gpu_type_of(choice.row),
            share_pct=sl.thread_pct, created_at=self.clock.now()))
        return True

    def _remove_replica(self, replica: _Replica) -> None:
        self.twin.delete_pod(self.deps[replica.deployment].namespace, replica.pod_name)
        self.replicas.remove(replica)

    # -- capacity ----------------------------------------------------------------------
    def clients(self) -> dict[tuple[str, int], int]:
        count: dict[tuple[str, int], int] = {}
        for r in self.replicas:
            count[r.gpu] = count.get(r.gpu, 0) + 1
        return count

    def _capacity(self, r: _Replica, clients: Mapping[tuple[str, int], int]) -> float:
        prompt, output = self.tokens[r.deployment]
        return self.perf.max_throughput_rps(
            self.classes[r.deployment].workload_class, r.gpu_type, share=r.share_pct / 100.0,
            prompt_tokens=prompt, output_tokens=output, co_runners=clients[r.gpu] - 1)

    def _deployment_capacity(self, d: int, clients: Mapping[tuple[str, int], int]) -> float:
        return sum(self._capacity(r, clients) for r in self.replicas if r.deployment == d)

    # -- one control step --------------------------------------------------------------
    def observe(self, now: float, telemetry: FleetTelemetry) -> None:
        """Learn rates, request sizes and wanted capacity from the latest telemetry."""
        rule = self.rule
        by_name = {(t.namespace, t.model): t for t in telemetry.deployments}
        for d, dep in enumerate(self.deps):
            t = by_name.get((dep.namespace, dep.name))
            c = t.counters if t is not None else None
            values = np.zeros(4) if c is None else np.array(
                [c.requests_total, c.success_total, c.prompt_tokens_total,
                 c.generation_tokens_total], dtype=np.float64)
            history = self.counter_history[d]
            history.append((now, values))
            horizon = max(rule.rate_window_s, 300.0)
            while len(history) > 2 and history[1][0] <= now - horizon:
                history.popleft()
            # Arrival rate over the rate window.
            then, old = history[0]
            for when, vals in history:
                if when <= now - rule.rate_window_s:
                    then, old = when, vals
            rate = (values[0] - old[0]) / (now - then) if now > then else 0.0
            # Mean request size over the whole kept history (up to 5 min).
            first = history[0][1]
            ok = values[1] - first[1]
            if ok > 0:
                self.tokens[d] = ((values[2] - first[2]) / ok, (values[3] - first[3]) / ok)
            queue = float(t.queue_waiting) if t is not None else 0.0
            wanted = rate / rule.target_utilization + queue / rule.drain_s
            wanted_history = self.wanted_history[d]
            wanted_history.append((now, wanted))
            keep = max(rule.up_window_s, rule.down_window_s)
            while wanted_history and wanted_history[0][0] < now - keep - 1e-9:
                wanted_history.popleft()

    def _scale_up(self, targets: Sequence[float], snapshot: FleetSnapshot | None) -> set[int]:
        """Add replicas, neediest deployment (lowest capacity/target) first, one at a time,
        until every deployment's capacity covers its target or nothing more can be placed."""
        n = len(self.deps)
        blocked: set[int] = set()
        scaled_up: set[int] = set()
        while True:
            clients = self.clients()
            counts = [0] * n
            for r in self.replicas:
                counts[r.deployment] += 1
            short = []
            for d in range(n):
                if d in blocked or counts[d] >= self.rule.max_replicas or targets[d] <= 0:
                    continue
                ratio = self._deployment_capacity(d, clients) / targets[d]
                if ratio < 1.0:
                    short.append((ratio, -self.deps[d].memory_gb, d))
            if not short:
                return scaled_up
            d = min(short)[2]
            if snapshot is None:
                snapshot = self._snapshot()
            if self._add_replica(d, snapshot):
                scaled_up.add(d)
            else:
                blocked.add(d)

    def scale(self, now: float) -> None:
        """Scale up the deployments short of their target, then scale down the others
        while what remains covers their target."""
        rule = self.rule
        n = len(self.deps)
        up = [min(w for t, w in self.wanted_history[d] if t >= now - rule.up_window_s - 1e-9)
              for d in range(n)]
        scaled_up = self._scale_up(up, None)
        for d in range(n):
            if d in scaled_up:
                continue
            down_target = max(w for _, w in self.wanted_history[d])
            while True:
                mine = [r for r in self.replicas if r.deployment == d]
                if len(mine) <= rule.min_replicas:
                    break
                clients = self.clients()
                victim = min(mine, key=lambda r: (
                    self._capacity(r, clients) / self._price(r), -r.created_at))
                clients[victim.gpu] -= 1
                remaining = sum(self._capacity(r, clients) for r in mine if r is not victim)
                if remaining < down_target:
                    break
                self._remove_replica(victim)

    def _price(self, r: _Replica) -> float:
        return float(self.catalog[r.gpu_type].price_per_gpu_hour) * r.share_pct / 100.0 or 1e-9


def _energy(telemetry: FleetTelemetry, rows: Mapping[tuple[str, int], int], n: int
            ) -> np.ndarray:
    out = np.zeros(n)
    for g in telemetry.gpus:
        row = rows.get((g.node, g.gpu_index))
        if row is not None:
            out[row] = g.energy_j
    return out


def _counters(telemetry: FleetTelemetry, deps: Sequence[Deployment]
              ) -> tuple[np.ndarray, list[Histogram | None]]:
    """Per deployment: [requests, successes, prompt tokens, output tokens] and e2e histogram."""
    by_name = {(t.namespace, t.model): t for t in telemetry.deployments}
    values = np.zeros((len(deps), 4))
    hists: list[Histogram | None] = []
    for i, d in enumerate(deps):
        t = by_name.get((d.namespace, d.name))
        c = t.counters if t is not None else None
        if c is None:
            hists.append(None)
            continue
        values[i] = (c.requests_total, c.success_total, c.prompt_tokens_total,
                     c.generation_tokens_total)
        hists.append(c.e2e_latency)
    return values, hists


def _within(now: Sequence[Histogram | None], before: Sequence[Histogram | None],
            deps: Sequence[Deployment]) -> np.ndarray:
    """Per deployment: requests between two readings that finished within its SLA."""
    out = np.zeros(len(deps))
    for d, dep in enumerate(deps):
        hist = now[d]
        if hist is None:
            continue
        counts = np.array(hist.counts, dtype=np.float64)
        earlier = before[d]
        if earlier is not None:
            counts -= np.array(earlier.counts, dtype=np.float64)
        out[d] = _count_within(counts, hist.bounds, dep.sla_s)
    return out


def _count_within(counts: np.ndarray, bounds: Sequence[float], limit: float) -> float:
    """Observations ≤ ``limit`` in a histogram, interpolating inside the bucket it falls in."""
    b = np.asarray(bounds, dtype=np.float64)
    i = int(np.searchsorted(b, limit - 1e-12, side="left"))
    if i >= b.size:
        return float(counts[: b.size].sum())
    below = float(counts[:i].sum())
    lower = 0.0 if i == 0 else float(b[i - 1])
    if math.isclose(limit, float(b[i]), rel_tol=0, abs_tol=1e-9):
        return below + float(counts[i])
    return below + float(counts[i]) * (limit - lower) / (float(b[i]) - lower)


def _source(traffic: ArrivalSource | Trace, *, start: float, scale: float, offset_s: float,
            seed: int) -> ArrivalSource:
    if not isinstance(traffic, Trace):
        return traffic
    return TraceReplay(traffic, start=start - offset_s, scale=scale, seed=seed)


def _traffic_totals(source: ArrivalSource, *, start: float, end: float
                    ) -> tuple[int, float, float]:
    """Requests, prompt tokens and output tokens arriving in ``[start, end)``, read an hour
    at a time so a long period never sits in memory at once."""
    count, prompt, output = 0, 0.0, 0.0
    t = start
    while t < end:
        chunk = source.arrivals(t, min(end, t + 3600.0))
        count += len(chunk)
        prompt += float(chunk.prefill_tokens.sum())
        output += float(chunk.decode_tokens.sum())
        t += 3600.0
    return count, prompt, output


def evaluate_policy(
    settings: Settings,
    *,
    policy: PlacementPolicy,
    traffic: ArrivalSource | Trace,
    deployments: Sequence[Deployment],
    duration_s: float,
    nodes: Sequence[Node] | None = None,
    window_s: float = 60.0,
    seed: int = 0,
    start: float = 0.0,
    trace_scale: float = 1.0,
    trace_offset_s: float = 0.0,
    autoscale: bool = True,
    warm_start: bool = True,
    rule: ScalingRule | None = None,
    perf: PerfModel | None = None,
    twin_config: TwinConfig | None = None,
    timer: Callable[[], float] | None = None,
    name: str = "",
) -> PolicyResult:
    """Replay ``traffic`` from ``start`` for ``duration_s`` with replicas placed by ``policy``.

    ``traffic`` is an arrival source, or a parsed ``Trace`` replayed at
    ``trace_scale`` × its request count, its offset ``trace_offset_s`` arriving at
    ``start``. ``nodes`` default to the settings' fleet
    (emptied). With ``warm_start`` the fleet starts sized by the scaling rule for the
    period's average traffic (as an operator sizes deployments from history; the same
    for every policy), otherwise at ``min_replicas``; with ``autoscale=False`` it keeps
    that size. ``timer`` (e.g. ``time.perf_counter``) times the policy's decisions.
    """
    rule = rule or ScalingRule()
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValidationError("duration_s", "must be a number > 0")
    step = rule.control_interval_s
    per_window = round(window_s / step)
    if per_window < 1 or not math.isclose(per_window * step, window_s):
        raise ValidationError("window_s", f"must be a whole multiple of the control interval "
                              f"({step:g} s)")
    if not deployments:
        raise ValidationError("deployments", "needs at least one deployment")
    if len({d.name for d in deployments}) != len(deployments):
        raise ValidationError("deployments", "names must be unique")
    source = _source(traffic, start=start, scale=trace_scale, offset_s=trace_offset_s,
                     seed=seed)
    perf = perf or PerfModel.for_catalog(settings.catalog)
    initial_rps: list[float] | None = None
    initial_tokens: tuple[float, float] | None = None
    if warm_start:
        count, prompt, output = _traffic_totals(source, start=start, end=start + duration_s)
        weights = np.array([d.traffic_weight for d in deployments], dtype=np.float64)
        if count and weights.sum() > 0:
            initial_rps = list(count / duration_s * weights / weights.sum())
            initial_tokens = (prompt / count, output / count)
    run = _Run(settings, policy=policy, traffic=source, deployments=deployments,
               nodes=nodes if nodes is not None else fleet_from_settings(settings),
               start=start, seed=seed, rule=rule, perf=perf, twin_config=twin_config,
               timer=timer, initial_rps=initial_rps, initial_tokens=initial_tokens)
    books = _Books(run, settings=settings, steps=math.ceil(duration_s / step - 1e-9),
                   per_window=per_window)
    if autoscale:
        run.observe(run.clock.now(), books.telemetry)
    for _ in range(books.steps):
        books.interval(step)
        if autoscale:
            run.observe(run.clock.now(), books.telemetry)
            run.scale(run.clock.now())
    return books.result(name=name or getattr(policy, "name", type(policy).__name__),
                        window_s=window_s)


class _Books:
    """Cost, energy, GPUs, replicas and per-window demand of one run, interval by interval."""

    def __init__(self, run: _Run, *, settings: Settings, steps: int, per_window: int) -> None:
        self.run = run
        self.steps = steps
        self.per_window = per_window
        self.types = settings.catalog.names
        self.type_of = np.array([self.types.index(t) for t in run.gpu_types])
        self.prices = [settings.catalog[t].price_per_gpu_hour for t in self.types]
        self.kwh = settings.catalog.electricity_per_kwh
        n_gpu, n_dep, n_type = len(run.gpu_keys), len(run.deps), len(self.types)
        n_windows = math.ceil(steps / per_window)
        self.telemetry = run.twin.telemetry()
        self.last_energy = _energy(self.telemetry, run.gpu_row, n_gpu)
        self.first_counts, self.first_hists = _counters(self.telemetry, run.deps)
        self.window_counts, self.window_hists = self.first_counts.copy(), self.first_hists
        self.k = 0
        self.w_counts = np.zeros((n_windows, n_dep, 4))
        self.w_within = np.zeros((n_windows, n_dep))
        self.w_capacity = np.zeros((n_windows, n_dep, n_type))
        self.window_costs: list[Decimal] = []
        self.gpu_cost = Decimal(0)
        self.energy_cost = Decimal(0)
        self.pct_s = np.zeros(n_type)  # share-% × seconds held per type, this window
        self.total_pct_s = np.zeros(n_type)
        self.energy_w = 0.0  # joules, this window
        self.energy_total = 0.0
        self.cap_units = np.zeros((n_dep, n_type))
        self.gpus_sum, self.peak_gpus = 0.0, 0
        self.replica_sum = np.zeros(n_dep)
        self.replica_peak = np.zeros(n_dep, dtype=np.int64)

    def interval(self, step: float) -> None:
        """Advance the twin one control interval and book what was held during it."""
        run = self.run
        held = np.zeros(len(run.gpu_keys), dtype=np.int64)
        per_dep = np.zeros(len(run.deps), dtype=np.int64)
        clients = run.clients()
        for r in run.replicas:  # held through the interval: binds happen between intervals
            held[run.gpu_row[r.gpu]] += r.share_pct
            per_dep[r.deployment] += 1
            self.cap_units[r.deployment, self.types.index(r.gpu_type)] += \
                1.0 / run.perf.slowdown(clients[r.gpu] - 1) / self.per_window
        hosting = held > 0
        run.twin.step(step)
        self.telemetry = run.twin.telemetry()
        energy = _energy(self.telemetry, run.gpu_row, len(run.gpu_keys))
        self.energy_w += float((energy - self.last_energy)[hosting].sum())
        self.last_energy = energy
        self.pct_s += np.bincount(self.type_of, weights=np.minimum(held, 100) * step,
                                  minlength=len(self.types))
        used = int(hosting.sum())
        self.gpus_sum += used
        self.peak_gpus = max(self.peak_gpus, used)
        self.replica_sum += per_dep
        self.replica_peak = np.maximum(self.replica_peak, per_dep)
        self.k += 1
        if self.k % self.per_window == 0 or self.k == self.steps:
            self._close_window()

    def _close_window(self) -> None:
        w = len(self.window_costs)
        counts, hists = _counters(self.telemetry, self.run.deps)
        self.w_counts[w] = counts - self.window_counts
        self.w_within[w] = _within(hists, self.window_hists, self.run.deps)
        self.window_counts, self.window_hists = counts, hists
        # A last, shorter window is averaged over its own length.
        self.w_capacity[w] = self.cap_units * self.per_window / \
            ((self.k - 1) % self.per_window + 1)
        self.cap_units[:] = 0.0
        g_cost = sum((p * Decimal(repr(float(s))) / _PCT_SECONDS_PER_GPU_HOUR
                      for p, s in zip(self.prices, self.pct_s, strict=True)), Decimal(0))
        e_cost = Decimal(repr(self.energy_w)) / _J_PER_KWH * self.kwh
        self.window_costs.append(g_cost + e_cost)
        self.gpu_cost += g_cost
        self.energy_cost += e_cost
        self.total_pct_s += self.pct_s
        self.energy_total += self.energy_w
        self.pct_s[:] = 0.0
        self.energy_w = 0.0

    def result(self, *, name: str, window_s: float) -> PolicyResult:
        run, deps, steps = self.run, self.run.deps, self.steps
        last_counts, last_hists = _counters(self.telemetry, deps)
        totals = last_counts - self.first_counts
        within = _within(last_hists, self.first_hists, deps)
        per_deployment = tuple(
            DeploymentResult(name=dep.name, sla_s=dep.sla_s, requests=int(totals[d, 0]),
                             succeeded=int(totals[d, 1]), within_sla=round(float(within[d])),
                             mean_replicas=float(self.replica_sum[d] / steps),
                             peak_replicas=int(self.replica_peak[d]))
            for d, dep in enumerate(deps))
        return PolicyResult(
            policy=name, duration_s=steps * run.rule.control_interval_s, window_s=window_s,
            requests=int(totals[:, 0].sum()), succeeded=int(totals[:, 1].sum()),
            within_sla=round(float(within.sum())),
            cost=self.gpu_cost + self.energy_cost, gpu_cost=self.gpu_cost,
            energy_cost=self.energy_cost, energy_j=self.energy_total,
            mean_gpus=self.gpus_sum / steps, peak_gpus=self.peak_gpus,
            decisions=run.decisions, placement_failures=run.failures,
            decide_s=run.decide_s if run.timer is not None else None,
            window_costs=tuple(self.window_costs),
            window_requests=self.w_counts[:, :, 0].astype(np.int64),
            window_succeeded=self.w_counts[:, :, 1].astype(np.int64),
            window_prompt_tokens=self.w_counts[:, :, 2],
            window_output_tokens=self.w_counts[:, :, 3],
            window_within_sla=self.w_within, window_capacity=self.w_capacity,
            deployments=deps, per_deployment=per_deployment,
            share_hours={t: float(self.total_pct_s[i]) / 360_000.0
                         for i, t in enumerate(self.types)})


def evaluate_weights(
    settings: Settings,
    weights: SchedulerWeights,
    *,
    traffic: ArrivalSource | Trace,
    duration_s: float,
    seed: int = 0,
    start: float = 0.0,
    trace_scale: float = 1.0,
    trace_offset_s: float = 0.0,
    deployments: Sequence[Deployment] | None = None,
    nodes: Sequence[Node] | None = None,
    window_s: float = 60.0,
    rule: ScalingRule | None = None,
    perf: PerfModel | None = None,
    weight_version: int | None = None,
    timer: Callable[[], float] | None = None,
) -> PolicyResult:
    """Score a weight vector: the Scheduler with ``weights`` under ``evaluate_policy``.

    ``perf`` is where a calibrated performance model goes. Without ``deployments``
    the three ``STANDARD_MODELS`` are used, with SLAs sized on the first ten
    minutes of ``traffic``.
    """
    perf = perf or PerfModel.for_catalog(settings.catalog)
    source = _source(traffic, start=start, scale=trace_scale, offset_s=trace_offset_s,
                     seed=seed)
    if deployments is None:
        sample = source.arrivals(start, start + min(duration_s, 600.0))
        if not len(sample):
            sample = source.arrivals(start, start + duration_s)
        if not len(sample):
            raise ValidationError("traffic", "has no requests in the period to evaluate")
        deployments = standard_deployments(settings, prompt_tokens=sample.prefill_tokens,
                                           output_tokens=sample.decode_tokens, perf=perf)
    scheduler = Scheduler.from_settings(settings, weights=weights, weight_version=weight_version)
    return evaluate_policy(settings, policy=scheduler, traffic=source, deployments=deployments,
                           duration_s=duration_s, nodes=nodes, window_s=window_s, seed=seed,
                           start=start, rule=rule, perf=perf, timer=timer, name="scheduler")
