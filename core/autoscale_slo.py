"""The ``slo`` autoscaling policy (SPEC §3.6): replicas sized to latency objectives at the
lowest fleet cost per hour, the GPU type of every new replica chosen, whole GPUs freed first.

Why: the queue rule (``seed``) knows neither what a replica can sustain nor
what the fleet pays. This policy does it the way a profiled planner does:

1. **Capacity per replica within the SLO** (``replica_capacity``): per GPU
   type, MPS share and co-runner count, the highest arrival rate at which the
   calibrated performance model (``core.sim.perf_model``) still meets the
   deployment's TTFT, TPOT and e2e targets for a request at the targets'
   quantile (``RequestShape``'s tail sizes), at most ``max_utilization`` of
   the replica's saturated throughput (queueing needs room).
2. **Replicas wanted and where the next one goes** (``plan``): each
   deployment must sustain its forecast (``core.autoscale_forecast``: recent
   rate and trend, daily pattern, burst headroom). Replicas are added one at
   a time, each where it raises the fleet's cost per hour the least per
   request/s it adds (SPEC §3.8: a GPU in use costs whole, so a slot on a GPU
   already held costs only its energy, while a fresh GPU costs its price and
   idle power) — capped by what is still missing, so a small shortfall does
   not buy a large GPU.
3. **Scale-in that packs**: replicas are removed while what remains covers
   the (stabilized) need, first those whose removal frees a whole GPU (the
   only replica left on it), then the least valuable: the least capacity within
   the SLO per dollar saved (what stays absorbs the next burst best per dollar).

Stabilization (``Stabilizer``), as the HPA's: a scale-up acts on the lowest
need of the last ``up_window_s``, a scale-down on the highest of the last
``down_window_s``, so one sample never flaps the fleet.

Pure: no I/O, no clock (``now`` is passed in). Invariants: every plan stays
within each deployment's [min, max] replicas; an added replica goes only to
a GPU type the deployment's class allows and whose memory holds it; a
removal never takes a deployment below what covers its need; a deployment
without a forecast (unknown load) is held, never scaled down.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from core.catalog import Catalog
from core.model import Node, WorkloadClass
from core.placement.filters import GPU_IN_USE_LABEL, GPU_TYPE_LABEL
from core.ports import PodPhase, ReplicaPod
from core.sim.perf_model import PerfModel
from core.slo_settings import LatencySlo

_BISECT = 24


@dataclass(frozen=True, slots=True)
class RequestShape:
    """A deployment's requests: mean sizes (throughput) and sizes at the SLO quantile."""

    prompt_tokens: float
    output_tokens: float
    tail_prompt_tokens: float
    tail_output_tokens: float

    def rounded(self) -> tuple[float, float, float, float]:
        return tuple(float(f"{v:.2g}") for v in (  # type: ignore[return-value]
            self.prompt_tokens, self.output_tokens, self.tail_prompt_tokens,
            self.tail_output_tokens))


@dataclass(frozen=True, slots=True)
class ReplicaCapacity:
    rps: float  # requests/s one replica sustains within the objectives
    saturated_rps: float
    limited_by: str  # "ttft", "tpot", "e2e", "utilization" or "cannot meet the SLO"


def replica_capacity(perf: PerfModel, *, workload_class: WorkloadClass, gpu_type: str,
                     share: float, shape: RequestShape, objectives: LatencySlo,
                     co_runners: int, max_utilization: float) -> ReplicaCapacity:
    """The highest rate at which one replica meets every stated target (see module doc)."""
    p = perf.params_for(workload_class, gpu_type)
    m = perf.slowdown(co_runners)
    saturated = perf.max_throughput_rps(workload_class, gpu_type, share=share,
                                        prompt_tokens=shape.prompt_tokens,
                                        output_tokens=shape.output_tokens,
                                        co_runners=co_runners)

    def fails(rate: float) -> str:
        point = perf.steady_state(workload_class, gpu_type, share=share,
                                  prompt_tokens=shape.prompt_tokens,
                                  output_tokens=shape.output_tokens, arrival_rps=rate,
                                  co_runners=co_runners)
        if not math.isfinite(point.latency_s):
            return "utilization"
        step = m * p.iteration_s(max(point.decode_batch, 1.0), share)
        tpot = step / (1.0 - point.prefill_fraction)
        ttft = m * p.prefill_s(shape.tail_prompt_tokens, share) + step
        e2e = ttft + max(0.0, shape.tail_output_tokens - 1) * tpot
        if objectives.ttft_s is not None and ttft > objectives.ttft_s:
            return "ttft"
        if objectives.tpot_s is not None and tpot > objectives.tpot_s:
            return "tpot"
        if objectives.e2e_s is not None and e2e > objectives.e2e_s:
            return "e2e"
        return ""

    top = saturated * max_utilization
    why = fails(top)
    if not why:
        return ReplicaCapacity(top, saturated, "utilization")
    if fails(0.0):
        return ReplicaCapacity(0.0, saturated, "cannot meet the SLO")
    lo, hi = 0.0, top
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        reason = fails(mid)
        if reason:
            hi, why = mid, reason
        else:
            lo = mid
    return ReplicaCapacity(lo, saturated, why)


class CapacityTable:
    """``replica_capacity`` memoized on rounded request shapes (shapes drift slowly)."""

    def __init__(self, perf: PerfModel, *, max_utilization: float) -> None:
        self.perf = perf
        self.max_utilization = max_utilization
        self._memo: dict[tuple[object, ...], ReplicaCapacity] = {}

    def get(self, *, workload_class: WorkloadClass, gpu_type: str, share_pct: int,
            shape: RequestShape, objectives: LatencySlo, co_runners: int) -> ReplicaCapacity:
        key = (workload_class, gpu_type, share_pct, shape.rounded(), objectives, co_runners)
        hit = self._memo.get(key)
        if hit is None:
            r = shape.rounded()
            hit = replica_capacity(
                self.perf, workload_class=workload_class, gpu_type=gpu_type,
                share=share_pct / 100.0, objectives=objectives, co_runners=co_runners,
                shape=RequestShape(*r), max_utilization=self.max_utilization)
            if len(self._memo) > 50_000:
                self._memo.clear()
            self._memo[key] = hit
        return hit


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True, slots=True)
class DeploymentNeed:
    """What one deployment must sustain, and what its replicas are."""

    key: str  # namespace/model
    workload_class: WorkloadClass
    share_pct: int
    memory_mib: int
    allowed_types: frozenset[str]
    min_replicas: int
    max_replicas: int
    need_rps: float | None  # planned rate for scaling up (stabilized); None: unknown
    keep_rps: float | None  # planned rate that scaling in must still cover (stabilized)
    shape: RequestShape
    objectives: LatencySlo


@dataclass(slots=True)
class _Gpu:
    key: tuple[str, int]
    gpu_type: str
    free_pct: int
    free_mib: int
    clients: list[str]  # deployment keys of the replicas on it
    usable: bool  # healthy, schedulable, ready: a new replica may go here


@dataclass(frozen=True, slots=True)
class Addition:
    gpu_type: str
    on_gpu_in_use: bool  # a slot on a GPU already held (no new GPU paid for)
    capacity_rps: float
    dollars_per_hour: float  # what it adds to the fleet's cost per hour
    why: str

    def labels(self) -> dict[str, str]:
        """The scale-up request's labels that make placement honour this choice (the
        ``AutoscalerChoice`` filter): the GPU type, and a free slot of a GPU in use."""
        out = {GPU_TYPE_LABEL: self.gpu_type}
        if self.on_gpu_in_use:
            out[GPU_IN_USE_LABEL] = "true"
        return out


@dataclass(frozen=True, slots=True)
class DeploymentPlan:
    key: str
    replicas: int
    target: int
    need_rps: float | None
    capacity_rps: float  # what the current replicas sustain within the SLO
    per_type: Mapping[str, ReplicaCapacity]  # one more replica on a GPU of its own
    additions: tuple[Addition, ...] = ()
    removals: tuple[str, ...] = ()  # pod names
    saving_per_hour: float = 0.0
    reason: str = ""
    type_choice: str = ""  # why the GPU type of the next replica
    objectives: str = ""


@dataclass(frozen=True, slots=True)
class _Held:
    pod: str
    deployment: str
    gpu: tuple[str, int]
    gpu_type: str
    share_pct: int
    order: int


@dataclass
class FleetState:
    """GPUs (free share and memory, who is on them) and the replicas holding them."""

    gpus: dict[tuple[str, int], _Gpu] = field(default_factory=dict)
    held: list[_Held] = field(default_factory=list)

    @classmethod
    def of(cls, nodes: Sequence[Node], pods: Sequence[ReplicaPod]) -> FleetState:
        state = cls()
        for n in nodes:
            for g in n.gpus:
                state.gpus[(n.name, g.index)] = _Gpu(
                    key=(n.name, g.index), gpu_type=g.gpu_type, free_pct=g.share_free_pct,
                    free_mib=g.memory_free_mib, clients=[],
                    usable=g.healthy and n.schedulable and n.ready and not g.mig_enabled)
        for i, p in enumerate(pods):
            if p.phase not in (PodPhase.PENDING.value, PodPhase.RUNNING.value):
                continue
            gpu = state.gpus.get((p.node, p.gpu_index))
            if gpu is None:
                continue
            gpu.clients.append(p.deployment)
            state.held.append(_Held(pod=p.name, deployment=p.deployment, gpu=gpu.key,
                                    gpu_type=gpu.gpu_type, share_pct=p.thread_pct, order=i))
        return state


def _hourly(catalog: Catalog, gpu_type: str, *, fresh: bool, share_pct: int) -> float:
    """What a replica adds to the fleet's $/h: a fresh GPU's price and idle power, and the
    replica's share of the dynamic power at full load (an overestimate of its energy)."""
    t = catalog[gpu_type]
    kwh = float(catalog.electricity_per_kwh)
    dynamic = (t.tdp_w - t.idle_w) * share_pct / 100.0 * kwh / 1000.0
    return (float(t.price_per_gpu_hour) + t.idle_w * kwh / 1000.0 if fresh else 0.0) + dynamic


class Planner:
    """Plans every deployment over one fleet state (see the module doc)."""

    def __init__(self, catalog: Catalog, table: CapacityTable) -> None:
        self.catalog = catalog
        self.table = table

    def _cap(self, need: DeploymentNeed, gpu_type: str, clients: int) -> float:
        return self.table.get(workload_class=need.workload_class, gpu_type=gpu_type,
                              share_pct=need.share_pct, shape=need.shape,
                              objectives=need.objectives, co_runners=max(0, clients - 1)).rps

    def capacity(self, need: DeploymentNeed, state: FleetState) -> float:
        return sum(self._cap(need, h.gpu_type, len(state.gpus[h.gpu].clients))
                   for h in state.held if h.deployment == need.key)

    def per_type(self, need: DeploymentNeed) -> dict[str, ReplicaCapacity]:
        out = {}
        for t in self.catalog.names:
            if self._fits_type(need, t):
                out[t] = self.table.get(workload_class=need.workload_class, gpu_type=t,
                                        share_pct=need.share_pct, shape=need.shape,
                                        objectives=need.objectives, co_runners=0)
        return out

    def _fits_type(self, need: DeploymentNeed, gpu_type: str) -> bool:
        return ((not need.allowed_types or gpu_type in need.allowed_types)
                and self.catalog[gpu_type].memory_mib >= need.memory_mib)

    def _candidates(self, need: DeploymentNeed, state: FleetState, missing: float, *,
                    below_min: bool = False) -> list[tuple[float, int, Addition, _Gpu]]:
        """Per GPU type: the best slot on a GPU in use and a fresh GPU, scored by $/h per
        request/s added (the gain capped at what is missing). Below its minimum a
        deployment gets a replica even where it adds nothing within the SLO (the
        cheapest then)."""
        best: dict[tuple[str, bool], tuple[float, int, Addition, _Gpu]] = {}
        for gpu in state.gpus.values():
            if not gpu.usable or not self._fits_type(need, gpu.gpu_type):
                continue
            if gpu.free_pct < need.share_pct or gpu.free_mib < need.memory_mib:
                continue
            in_use = bool(gpu.clients)
            slot = (gpu.gpu_type, in_use)
            # Within a slot, the GPU with the fewest clients gives the most (least slowdown).
            if slot in best and len(best[slot][3].clients) <= len(gpu.clients):
                continue
            j = len(gpu.clients) + 1
            own = gpu.clients.count(need.key)
            gain = self._cap(need, gpu.gpu_type, j) - own * (
                self._cap(need, gpu.gpu_type, j - 1) - self._cap(need, gpu.gpu_type, j))
            if gain <= 0 and not below_min:
                continue
            dollars = _hourly(self.catalog, gpu.gpu_type, fresh=not in_use,
                              share_pct=need.share_pct)
            useful = max(min(gain, missing) if missing > 0 else gain, 1e-9)
            score = dollars / useful
            why = (f"{gpu.gpu_type}: +{gain:.2f}/s for ${dollars:.3f}/h "
                   f"({'a free slot on a GPU already held' if in_use else 'a fresh GPU'})")
            best[slot] = (score, 0 if in_use else 1,
                          Addition(gpu.gpu_type, in_use, gain, dollars, why), gpu)
        return sorted(best.values(), key=lambda c: (c[0], c[1], c[2].gpu_type))

    def plan(self, needs: Sequence[DeploymentNeed], state: FleetState) -> list[DeploymentPlan]:
        """Scale-ups first (largest models first, so they find whole GPUs), then scale-ins."""
        counts = {n.key: sum(1 for h in state.held if h.deployment == n.key) for n in needs}
        before = {n.key: self.capacity(n, state) for n in needs}
        additions: dict[str, list[Addition]] = {n.key: [] for n in needs}
        choice: dict[str, str] = {}
        blocked: set[str] = set()
        while True:
            # The neediest deployment first (below its minimum, then the lowest share of
            # its need covered; larger models first on ties, so they find whole GPUs).
            short: list[tuple[float, int, DeploymentNeed]] = []
            for need in needs:
                have = counts[need.key] + len(additions[need.key])
                if need.key in blocked or have >= need.max_replicas:
                    continue
                if have < need.min_replicas:
                    short.append((-1.0, -need.memory_mib, need))
                    continue
                if need.need_rps is None or need.need_rps <= 0:
                    continue
                cap = self.capacity(need, state)
                if cap < need.need_rps - 1e-9:
                    short.append((cap / need.need_rps, -need.memory_mib, need))
            if not short:
                break
            need = min(short, key=lambda x: (x[0], x[1]))[2]
            missing = (need.need_rps or 0.0) - self.capacity(need, state)
            have = counts[need.key] + len(additions[need.key])
            cands = self._candidates(need, state, missing, below_min=have < need.min_replicas)
            if not cands:
                choice.setdefault(need.key, "no GPU has room for another replica")
                blocked.add(need.key)
                continue
            _, _, add, gpu = cands[0]
            others = "; ".join(c[2].why for c in cands[1:3])
            choice.setdefault(need.key, f"chose {add.why}, the least $/h per request/s"
                              + (f" (next: {others})" if others else ""))
            additions[need.key].append(add)
            gpu.clients.append(need.key)
            gpu.free_pct -= need.share_pct
            gpu.free_mib -= need.memory_mib
            state.held.append(_Held(pod="", deployment=need.key, gpu=gpu.key,
                                    gpu_type=gpu.gpu_type, share_pct=need.share_pct,
                                    order=len(state.held)))
        plans = []
        for need in needs:
            adds = additions[need.key]
            n = counts[need.key]
            removals: tuple[str, ...] = ()
            saving = 0.0
            if not adds:
                removals, saving = self._scale_in(need, state, n)
            target = n + len(adds) - len(removals)
            if adds:
                reason = (f"{before[need.key]:.2f}/s within the SLO < {need.need_rps or 0:.2f}/s "
                          "planned" if need.need_rps is not None and n >= need.min_replicas
                          else f"below the minimum of {need.min_replicas} replicas")
            elif removals:
                reason = (f"{len(removals)} fewer still sustain {need.keep_rps or 0:.2f}/s "
                          f"within the SLO, saving ${saving:.3f}/h")
            elif need.need_rps is None:
                reason = "no forecast yet (load unknown): holding"
            else:
                reason = (f"{before[need.key]:.2f}/s within the SLO covers "
                          f"{need.need_rps:.2f}/s planned")
            plans.append(DeploymentPlan(
                key=need.key, replicas=n, target=target, need_rps=need.need_rps,
                capacity_rps=before[need.key], per_type=self.per_type(need),
                additions=tuple(adds), removals=removals, saving_per_hour=saving,
                reason=reason, type_choice=choice.get(need.key, self._next_choice(need, state)),
                objectives=need.objectives.describe()))
        return plans

    def _next_choice(self, need: DeploymentNeed, state: FleetState) -> str:
        cands = self._candidates(need, state, 0.0)
        if not cands:
            return "no GPU has room for another replica"
        return f"the next replica would go to {cands[0][2].why}"

    def _scale_in(self, need: DeploymentNeed, state: FleetState, count: int
                  ) -> tuple[tuple[str, ...], float]:
        if need.keep_rps is None:
            return (), 0.0
        keep = max(need.keep_rps, need.need_rps or 0.0)
        removed: list[str] = []
        saving = 0.0
        while count - len(removed) > need.min_replicas:
            mine = [h for h in state.held if h.deployment == need.key and h.pod]
            best: tuple[tuple[float, float, int], _Held, float] | None = None
            for h in mine:
                gpu = state.gpus[h.gpu]
                frees = len(gpu.clients) == 1
                dollars = _hourly(self.catalog, h.gpu_type, fresh=frees, share_pct=h.share_pct)
                # The least valuable first: the least capacity within the SLO per dollar
                # saved, so what stays is what absorbs the next burst best per dollar.
                lost = self._cap(need, h.gpu_type, len(gpu.clients))
                rank = (0.0 if frees else 1.0, lost / max(dollars, 1e-9), -h.order)
                if best is None or rank < best[0]:
                    best = (rank, h, dollars)
            if best is None:
                break
            _, victim, dollars = best
            gpu = state.gpus[victim.gpu]
            gpu.clients.remove(need.key)
            state.held.remove(victim)
            if self.capacity(need, state) < keep - 1e-9 or dollars <= 0:
                gpu.clients.append(need.key)
                state.held.append(victim)
                break
            gpu.free_pct += victim.share_pct
            removed.append(victim.pod)
            saving += dollars
        return tuple(removed), saving


# ------------------------------------------------------------------------ stabilization
class Stabilizer:
    """Per deployment: the needs of the last windows; up acts on the lowest of the up
    window, down on the highest of the down window (as the HPA's behaviour does)."""

    def __init__(self, *, up_window_s: float, down_window_s: float) -> None:
        self.up_window_s = up_window_s
        self.down_window_s = down_window_s
        self._needs: dict[str, deque[tuple[float, float]]] = {}

    def reset(self) -> None:
        self._needs.clear()

    def observe(self, key: str, *, now: float, need: float) -> tuple[float, float]:
        """(need for scaling up, need for scaling down) at ``now``."""
        history = self._needs.setdefault(key, deque())
        history.append((now, need))
        keep = max(self.up_window_s, self.down_window_s)
        while history and history[0][0] < now - keep - 1e-9:
            history.popleft()
        up = min(v for t, v in history if t >= now - self.up_window_s - 1e-9)
        down = max(v for _, v in history)
        return up, down

    def covered(self, key: str, *, now: float) -> bool:
        """Whether the history spans the whole down window (a scale-in may act)."""
        history = self._needs.get(key)
        return bool(history) and history[0][0] <= now - self.down_window_s + 1e-9
