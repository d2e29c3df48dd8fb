"""Offline lower bound on fleet cost, and fleet load, by integer programming (SciPy/HiGHS).

Run through ``bench.placement_quality``; this module only builds and solves
the programs.

The lower bound, per time window of length τ. Decision variables: how many
GPUs of each type run each *packing pattern* (a multiset of MPS slices, one
slice per workload class member, whose shares fit in 100 %, whose memory
fits the GPU and whose client count fits the MPS limit); how many slices of
each deployment sit on each GPU type; what fraction of each deployment's work
each of those slices serves. Minimize, with the catalog's prices,

    τ/3600 · Σ price(type) · GPUs in use (whole: SPEC §3.8)   (GPU-hours held)
  + τ · $/kWh · Σ over used GPUs (idle power + dynamic power)   (energy)

subject to: at most the fleet's GPUs of each type; slices only where a
pattern has room; each slice serves at most τ seconds of saturated-slice
work (the perf model's ``work_s``: the most any placement can get out of it);
every deployment's work of the window is served; every deployment keeps at
least ``min_replicas`` slices (the autoscaler's floor, the same for every
policy). Dynamic power ``(TDP − idle)·u^1.5`` is convex, so it is bounded
below by its tangents at u = ¼, ½, ¾, 1 applied to the window-average
utilization (Jensen), with utilization ≥ share × work served / τ.

Why it is a lower bound on what a policy pays in the window. Each
constraint only asks what any placement must do, and each cost term is at
most what the twin charges: (1) slice capacity ignores the co-runner
slowdown (``m ≥ 1`` only lowers capacity), SLA headroom, queueing and
startup delays; (2) demand is the work of the requests that *succeeded* in
the window (failed ones are dropped, which only lowers it); (3) the energy
term keeps only the idle draw and a tangent underestimate of the convex
dynamic draw; (4) any placement that holds a fixed set of slices through the
window is a feasible point of the program, so its cost is at least the
optimum. Assumptions (stated, not hidden): slices are integers per window,
so a policy that changes its replicas *within* a window could undercut the
integer optimum by the integrality gap (the LP relaxation, also reported,
has no such caveat); work is attributed to the window it arrives in (a
request's work can spill past a window boundary by at most its latency).
When a window's work exceeds what the whole fleet can do (work spilled over
from the window before), the unserved part is dropped at no cost, which
keeps the result a bound.

Fleet load (for choosing the trace's scale factor): the same variables, all
continuous, with every slice's capacity reduced by the co-runner slowdown of
its pattern (all clients busy, as they are at full load); maximize θ such
that θ × the window's work fits. The window's load is 1/θ: the fraction of
the fleet's capacity the work needs when packed as well as possible.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from core.settings import Settings
from core.sim.evaluate import Deployment
from core.sim.perf_model import PerfModel

# Tangent points of u^1.5 used for the energy underestimate.
_TANGENTS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FleetModel:
    """What the programs need about a fleet and the deployments, fixed across windows."""

    types: tuple[str, ...]
    counts: np.ndarray  # GPUs per type
    price: np.ndarray  # $/GPU-hour per type
    idle_w: np.ndarray
    dyn_w: np.ndarray  # TDP − idle
    kwh: float
    # Patterns: type index, slices per deployment class group, total slices (k).
    pattern_type: np.ndarray
    pattern_slots: np.ndarray  # (patterns, groups)
    pattern_k: np.ndarray
    # Slots (deployment, type, k) where a deployment's slice can sit.
    slot_dep: np.ndarray
    slot_type: np.ndarray
    slot_k: np.ndarray
    dep_group: np.ndarray  # deployment → group (its class)
    dep_share: np.ndarray  # fraction of the GPU's threads
    # Saturated-slice seconds per prompt token and per output token, (deployment, type).
    sec_per_prompt: np.ndarray
    sec_per_output: np.ndarray
    slowdown: float  # co-runner slowdown per extra client
    # Fraction of a slice's saturated throughput usable within the SLO, (deployment, type);
    # 1 for the offline bound (no SLO headroom), below 1 for the online-feasible bound.
    derate: np.ndarray | None = None


def fleet_model(settings: Settings, *, deployments: Sequence[Deployment],
                fleet: Mapping[str, int], perf: PerfModel, slowdown: float = 0.0,
                derate: np.ndarray | None = None) -> FleetModel:
    """Patterns and per-token work for ``deployments`` on a fleet of ``fleet`` GPUs per type.

    ``slowdown`` is the co-runner slowdown the capacities assume (0 for the bound).
    """
    catalog, classes = settings.catalog, settings.classes
    types = tuple(t for t in catalog.names if fleet.get(t, 0) > 0)
    policies = [classes.classify(d.memory_gb) for d in deployments]
    groups = sorted({p.workload_class for p in policies}, key=lambda c: c.value)
    dep_group = np.array([groups.index(p.workload_class) for p in policies])
    share_of_group = [next(p.share_pct for p in policies if p.workload_class is g)
                      for g in groups]
    # The smallest memory among a group's deployments: permissive, so the bound stays a bound.
    mem_of_group = [min(math.ceil(d.memory_gb * 1024) for d, p in zip(deployments, policies,
                                                                     strict=True)
                        if p.workload_class is g) for g in groups]
    max_clients = settings.placement.max_mps_clients_per_gpu

    def can_run(group: int, gpu_type: str) -> bool:
        allowed = next(p.allowed_types for p in policies if p.workload_class is groups[group])
        return (not allowed or gpu_type in allowed) and \
            mem_of_group[group] <= catalog[gpu_type].memory_mib

    p_type, p_slots, p_k = [], [], []
    for ti, t in enumerate(types):
        ranges = [range(0, 100 // share_of_group[g] + 1) if can_run(g, t) else range(1)
                  for g in range(len(groups))]
        for combo in itertools.product(*ranges):
            k = sum(combo)
            if k == 0 or k > max_clients:
                continue
            if sum(c * share_of_group[g] for g, c in enumerate(combo)) > 100:
                continue
            if sum(c * mem_of_group[g] for g, c in enumerate(combo)) > catalog[t].memory_mib:
                continue
            p_type.append(ti)
            p_slots.append(combo)
            p_k.append(k)
    pattern_slots = np.array(p_slots, dtype=np.int64).reshape(len(p_slots), len(groups))
    s_dep, s_type, s_k = [], [], []
    for d in range(len(deployments)):
        g = int(dep_group[d])
        for ti in range(len(types)):
            ks = sorted({p_k[i] for i in range(len(p_k))
                         if p_type[i] == ti and pattern_slots[i, g] > 0})
            for k in ks:
                s_dep.append(d)
                s_type.append(ti)
                s_k.append(k)
    sec_p = np.zeros((len(deployments), len(types)))
    sec_o = np.zeros((len(deployments), len(types)))
    for d, pol in enumerate(policies):
        for ti, t in enumerate(types):
            p = perf.params_for(pol.workload_class, t)
            share = pol.share_pct / 100.0
            sec_p[d, ti] = p.kp / (share + p.k4)
            sec_o[d, ti] = p.iteration_s(p.max_batch, share) / p.max_batch
    return FleetModel(
        types=types, counts=np.array([fleet[t] for t in types], dtype=np.float64),
        price=np.array([float(catalog[t].price_per_gpu_hour) for t in types]),
        idle_w=np.array([catalog[t].idle_w for t in types]),
        dyn_w=np.array([catalog[t].tdp_w - catalog[t].idle_w for t in types]),
        kwh=float(catalog.electricity_per_kwh),
        pattern_type=np.array(p_type, dtype=np.int64), pattern_slots=pattern_slots,
        pattern_k=np.array(p_k, dtype=np.int64),
        slot_dep=np.array(s_dep, dtype=np.int64), slot_type=np.array(s_type, dtype=np.int64),
        slot_k=np.array(s_k, dtype=np.int64), dep_group=dep_group,
        dep_share=np.array([p.share_pct / 100.0 for p in policies]),
        sec_per_prompt=sec_p, sec_per_output=sec_o, slowdown=slowdown,
        derate=None if derate is None else np.asarray(derate, dtype=np.float64)[
            :, [catalog.names.index(t) for t in types]])


def _work(m: FleetModel, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """Saturated-slice seconds of each deployment's requests on each type, (dep, type)."""
    return (np.asarray(prompt_tokens, dtype=np.float64)[:, None] * m.sec_per_prompt
            + np.asarray(output_tokens, dtype=np.float64)[:, None] * m.sec_per_output)


def _slot_rows(m: FleetModel) -> tuple[np.ndarray, np.ndarray]:
    """Fleet rows (type → patterns) and slot rows ((type, group, k) → patterns and slots)."""
    n_p, n_s = m.pattern_type.size, m.slot_dep.size
    fleet_rows = np.zeros((len(m.types), n_p))
    fleet_rows[m.pattern_type, np.arange(n_p)] = 1.0
    keys = sorted({(int(t), int(m.dep_group[d]), int(k))
                   for d, t, k in zip(m.slot_dep, m.slot_type, m.slot_k, strict=True)})
    rows = np.zeros((len(keys), n_p + n_s))
    for r, (t, g, k) in enumerate(keys):
        on = (m.pattern_type == t) & (m.pattern_k == k)
        rows[r, :n_p] = -np.where(on, m.pattern_slots[:, g], 0)
        rows[r, n_p:] = ((m.slot_type == t) & (m.dep_group[m.slot_dep] == g)
                         & (m.slot_k == k)).astype(np.float64)
    return fleet_rows, rows


def _structure_rows(m: FleetModel, n_var: int
                    ) -> tuple[list[np.ndarray], list[float], list[float]]:
    """The constraints both programs share, padded to ``n_var`` columns: per GPU type,
    patterns ≤ the GPUs of that type; per slot key, slots used ≤ slots the patterns give."""
    n_p, n_s = m.pattern_type.size, m.slot_dep.size
    fleet_rows, slot_rows = _slot_rows(m)
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []
    for t, fleet_row in enumerate(fleet_rows):
        row = np.zeros(n_var)
        row[:n_p] = fleet_row
        rows.append(row)
        lo.append(-np.inf)
        hi.append(float(m.counts[t]))
    for r in slot_rows:
        row = np.zeros(n_var)
        row[: n_p + n_s] = r
        rows.append(row)
        lo.append(-np.inf)
        hi.append(0.0)
    return rows, lo, hi


@dataclass(frozen=True, slots=True)
class WindowBound:
    cost: float  # dollars for the window
    gpus: float  # GPUs used
    dropped: bool  # some work exceeded the fleet and was dropped at no cost


def window_bound(m: FleetModel, *, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                 window_s: float, min_replicas: int, integral: bool = True,
                 held: np.ndarray | None = None) -> WindowBound:
    """The cheapest placement for one window's work (see the module doc).

    ``held`` (deployments × the model's types: slices held, each counted as 1 / its
    co-runner slowdown) adds "offer at least the capacity a policy held".
    """
    work = _work(m, prompt_tokens, output_tokens)
    args = {"work": work, "window_s": window_s, "min_replicas": min_replicas,
            "integral": integral, "held": held}
    result = _solve_bound(m, allow_drop=False, **args)
    if result is None:
        result = _solve_bound(m, allow_drop=True, **args)
        if result is None and held is not None and integral:
            # The held floor is an average over the window's control intervals: when the
            # fleet was full and its layout changed within the window, no single integer
            # packing dominates that average, but the relaxation (its convex hull) does,
            # and its optimum is still below what holding that capacity costs.
            result = _solve_bound(m, allow_drop=True, **{**args, "integral": False})
        if result is None:
            raise RuntimeError("the lower-bound program has no solution even with dropping")
        return WindowBound(result[0], result[1], True)
    return WindowBound(result[0], result[1], False)


def _solve_bound(m: FleetModel, *, work: np.ndarray, window_s: float, min_replicas: int,
                 integral: bool, allow_drop: bool, held: np.ndarray | None
                 ) -> tuple[float, float] | None:
    n_p, n_s, n_t, n_d = m.pattern_type.size, m.slot_dep.size, len(m.types), work.shape[0]
    # Variables: n (patterns), x (slices), f (fraction of work), e (dynamic W), u (dropped).
    o_x, o_f, o_e, o_u = n_p, n_p + n_s, n_p + 2 * n_s, n_p + 2 * n_s + n_t
    n_var = o_u + n_d
    tau = window_s
    mk = 1.0 + m.slowdown * (m.slot_k - 1)
    slot_work = work[m.slot_dep, m.slot_type]
    share = m.dep_share[m.slot_dep]

    c = np.zeros(n_var)
    # SPEC §3.8 (corrected): a GPU in use costs whole, its unallocated share included.
    energy_per_w = m.kwh * tau / 3.6e6
    c[:n_p] = tau / 3600.0 * m.price[m.pattern_type] + energy_per_w * m.idle_w[m.pattern_type]
    c[o_e:o_u] = energy_per_w

    rows, lo, hi = _structure_rows(m, n_var)
    usable = np.ones(n_s) if m.derate is None else m.derate[m.slot_dep, m.slot_type]
    for s in range(n_s):  # f·W ≤ x·τ·derate/m
        row = np.zeros(n_var)
        row[o_f + s] = slot_work[s]
        row[o_x + s] = -tau * usable[s] / mk[s]
        rows.append(row)
        lo.append(-np.inf)
        hi.append(0.0)
    for d in range(n_d):
        mine = m.slot_dep == d
        if work[d].max() > 0:  # Σ f + u ≥ 1
            row = np.zeros(n_var)
            row[o_f:o_e][mine] = 1.0
            row[o_u + d] = 1.0
            rows.append(row)
            lo.append(1.0)
            hi.append(np.inf)
        row = np.zeros(n_var)  # Σ x ≥ min replicas
        row[o_x:o_f][mine] = 1.0
        rows.append(row)
        lo.append(float(min_replicas))
        hi.append(np.inf)
        if held is not None and work[d].min() > 0:  # capacity ≥ what the policy held
            unit = work[d].max() / work[d]  # per type: requests' worth, normalized
            row = np.zeros(n_var)
            row[o_x:o_f][mine] = unit[m.slot_type[mine]] / mk[mine]
            rows.append(row)
            lo.append(float(held[d] @ unit))
            hi.append(np.inf)
    for t in range(n_t):  # e_t ≥ dyn·(a·U − b·GPUs)
        on = m.slot_type == t
        for u0 in _TANGENTS:
            a, b = 1.5 * math.sqrt(u0), 0.5 * u0**1.5
            row = np.zeros(n_var)
            row[o_f:o_e][on] = m.dyn_w[t] * a * share[on] * slot_work[on] / tau
            row[:n_p][m.pattern_type == t] = -m.dyn_w[t] * b
            row[o_e + t] = -1.0
            rows.append(row)
            lo.append(-np.inf)
            hi.append(0.0)

    upper = np.full(n_var, np.inf)
    upper[o_f:o_e] = 1.0
    upper[o_u:] = 1.0 if allow_drop else 0.0
    integrality = np.zeros(n_var)
    if integral:
        integrality[:o_f] = 1
    res = milp(c, constraints=LinearConstraint(np.array(rows), np.array(lo), np.array(hi)),
               bounds=Bounds(np.zeros(n_var), upper), integrality=integrality,
               options={"disp": False, "mip_rel_gap": 1e-4, "time_limit": 30.0})
    if res.x is None:
        return None  # infeasible (or no solution found at all)
    # HiGHS stops within its MIP gap (or time limit): its dual bound is ≤ the optimum.
    value = float(res.fun)
    dual = getattr(res, "mip_dual_bound", None)
    if integral and dual is not None and math.isfinite(dual):
        value = min(value, float(dual))
    return value, float(res.x[:n_p].sum())


@dataclass(frozen=True)
class BoundResult:
    window_costs: tuple[float, ...]
    lp_window_costs: tuple[float, ...]
    mean_gpus: float
    dropped_windows: int
    window_gpus: tuple[float, ...] = ()  # GPUs the integer optimum uses, per window

    @property
    def total(self) -> float:
        return float(sum(self.window_costs))

    @property
    def lp_total(self) -> float:
        return float(sum(self.lp_window_costs))


def lower_bound(m: FleetModel, *, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                window_s: float, min_replicas: int, held: np.ndarray | None = None
                ) -> BoundResult:
    """Per-window bounds for token totals shaped (windows, deployments); ``held``
    (windows × deployments × the model's types) adds the held-capacity floor."""
    costs, lp_costs, gpus, dropped = [], [], [], 0
    cache: dict[bytes, tuple[WindowBound, WindowBound]] = {}
    for w in range(prompt_tokens.shape[0]):
        floor = None if held is None else held[w]
        key = np.concatenate([prompt_tokens[w], output_tokens[w]]).tobytes() + \
            (b"" if floor is None else floor.tobytes())
        if key not in cache:
            args = {"prompt_tokens": prompt_tokens[w], "output_tokens": output_tokens[w],
                    "window_s": window_s, "min_replicas": min_replicas, "held": floor}
            cache[key] = (window_bound(m, **args), window_bound(m, integral=False, **args))
        exact, relaxed = cache[key]
        costs.append(exact.cost)
        lp_costs.append(relaxed.cost)
        gpus.append(exact.gpus)
        dropped += exact.dropped
    return BoundResult(tuple(costs), tuple(lp_costs), float(np.mean(gpus)) if gpus else 0.0,
                       dropped, tuple(gpus))


def online_bound(m: FleetModel, *, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                 window_s: float, startup_s: float, min_replicas: int) -> BoundResult:
    """The online-feasible bound: per window (as fine as the SLO needs), the cheapest fleet
    that serves, within the SLO (``m.derate``, co-runner slowdown included), the work of
    every window it must already be held for — a replica serving at ``t`` was started at
    ``t − startup_s``, so what is held at ``w`` serves each window of ``[w, w + startup]``.

    Per deployment that is the heaviest of those windows (replicas are per deployment, so
    the set held must carry each deployment's heaviest window on its own). A policy that
    knew the future and paid every start-up could reach it; one that does not pays more.
    """
    n = prompt_tokens.shape[0]
    ahead = max(0, math.ceil(startup_s / window_s - 1e-9))
    weight_p = m.sec_per_prompt[:, 0]
    weight_o = m.sec_per_output[:, 0]
    prompt = np.zeros_like(prompt_tokens, dtype=np.float64)
    output = np.zeros_like(output_tokens, dtype=np.float64)
    for w in range(n):
        span = slice(w, min(n, w + ahead + 1))
        work = prompt_tokens[span] * weight_p + output_tokens[span] * weight_o
        pick = np.argmax(work, axis=0) + w
        cols = np.arange(prompt_tokens.shape[1])
        prompt[w] = prompt_tokens[pick, cols]
        output[w] = output_tokens[pick, cols]
    return lower_bound(m, prompt_tokens=prompt, output_tokens=output, window_s=window_s,
                       min_replicas=min_replicas)


def window_load(m: FleetModel, *, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                window_s: float) -> float:
    """Fraction of the fleet's capacity one window's work needs, packed as well as possible."""
    work = _work(m, prompt_tokens, output_tokens)
    active = work.max(axis=1) > 0
    if not active.any():
        return 0.0
    n_p, n_s = m.pattern_type.size, m.slot_dep.size
    # Variables: n (patterns), x (slices), g (θ-scaled work fraction), θ.
    o_x, o_g, o_th = n_p, n_p + n_s, n_p + 2 * n_s
    n_var = o_th + 1
    mk = 1.0 + m.slowdown * (m.slot_k - 1)
    slot_work = work[m.slot_dep, m.slot_type]
    rows, lo, hi = _structure_rows(m, n_var)
    for s in range(n_s):
        row = np.zeros(n_var)
        row[o_g + s] = slot_work[s]
        row[o_x + s] = -window_s / mk[s]
        rows.append(row)
        lo.append(-np.inf)
        hi.append(0.0)
    for d in np.flatnonzero(active):
        row = np.zeros(n_var)
        row[o_g:o_th][m.slot_dep == d] = 1.0
        row[o_th] = -1.0
        rows.append(row)
        lo.append(0.0)
        hi.append(0.0)
    c = np.zeros(n_var)
    c[o_th] = -1.0
    res = milp(c, constraints=LinearConstraint(np.array(rows), np.array(lo), np.array(hi)),
               bounds=Bounds(np.zeros(n_var), np.full(n_var, np.inf)),
               options={"disp": False})
    if res.status != 0 or res.x is None:
        raise RuntimeError(f"the load program failed: {res.message}")
    theta = float(res.x[o_th])
    return math.inf if theta <= 0 else 1.0 / theta
