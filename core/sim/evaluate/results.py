"""What a placement-quality replay measured: cost, SLA attainment, GPUs, per-window demand.

Why: the feedback loop ranks candidate weights and the placement-quality bench
ranks policies by these figures, so cost here must be the fleet's cost as
SPEC §3.8 (corrected) defines it and ``core.cost`` computes it.

Cost: for every control interval, each GPU hosting at least one replica
(Pending ones included: they hold the GPU) is priced by ``core.cost.gpu_cost``
over the replicas' thread shares: its GPU-hour price × the interval, WHOLE,
plus the energy it drew (its energy counter's increase) × the electricity
price; the unallocated share is idle cost, a part of the total. A GPU hosting
nothing costs nothing. Money is integer nano-dollars per GPU and interval,
reported as ``Decimal`` dollars. SLA attainment counts requests whose
end-to-end latency is within their deployment's SLA (read from the latency
histogram; an SLA that is not a bucket bound is interpolated inside its
bucket), over every request that arrived: failed and timed-out requests are
misses.

Invariants: ``cost == gpu_cost + energy_cost == sum(window_costs)`` exactly;
``idle_cost <= cost``; the books only read the twin's telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from core.catalog import Catalog
from core.cost import Prices, gpu_cost, usd
from core.settings import Settings
from core.sim.evaluate.deployments import Deployment
from core.sim.evaluate.harness import Harness, Replica
from core.telemetry import FleetTelemetry, Histogram


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
    cost: Decimal  # what the fleet paid: gpu_cost + energy_cost, idle included
    gpu_cost: Decimal  # GPU-hour price × time of every GPU hosting a replica, whole
    energy_cost: Decimal
    idle_cost: Decimal  # the unallocated share of GPUs in use (price and energy): in ``cost``
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
    # GPUs hosting ≥ 1 replica per window, time-averaged (for GPUs-held-vs-demand charts).
    window_gpus: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    # The same replicas, on the same GPU types, packed anew every interval (first-fit
    # decreasing by share, within memory and the MPS client cap): the GPUs and the GPU-hour
    # price they would hold. ``gpu_cost`` over ``repacked_gpu_cost`` is what placement's
    # fragmentation costs (the repacking migrates replicas freely; first-fit decreasing is
    # a heuristic, so a ratio a hair under 1 means no fragmentation).
    repacked_mean_gpus: float = 0.0
    repacked_gpu_cost: Decimal = Decimal(0)

    @property
    def held_cost(self) -> Decimal:
        """The allocated part of what the fleet paid (price and energy of held shares)."""
        return self.cost - self.idle_cost

    @property
    def idle_share(self) -> float:
        """The part of the fleet's cost that paid for unallocated shares of GPUs in use."""
        return float(self.idle_cost / self.cost) if self.cost > 0 else 0.0

    @property
    def cost_per_1k(self) -> Decimal | None:
        """Dollars per 1,000 successful inferences (idle included); None when nothing
        succeeded."""
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


class Books:
    """Cost, energy, GPUs, replicas and per-window demand of one run, interval by interval."""

    def __init__(self, run: Harness, *, settings: Settings, steps: int, per_window: int
                 ) -> None:
        self.run = run
        self.steps = steps
        self.per_window = per_window
        self.prices = Prices.of(settings.catalog)
        self.types = settings.catalog.names
        self.type_of = np.array([self.types.index(t) for t in run.gpu_types])
        n_gpu, n_dep, n_type = len(run.gpu_keys), len(run.deps), len(self.types)
        n_windows = math.ceil(steps / per_window)
        self.telemetry = run.twin.telemetry()
        self.last_energy = _energy(self.telemetry, run.gpu_row, n_gpu)
        self.first_counts, self.first_hists = _counters(self.telemetry, run.deps)
        self.window_counts, self.window_hists = self.first_counts.copy(), self.first_hists
        self.first_met = _met(run)
        self.window_met = self.first_met.copy()
        self.k = 0
        self.w_counts = np.zeros((n_windows, n_dep, 4))
        self.w_within = np.zeros((n_windows, n_dep))
        self.w_capacity = np.zeros((n_windows, n_dep, n_type))
        self.window_costs: list[Decimal] = []
        # Nano-dollars, this window and in total: whole GPUs, energy, the idle part of both.
        self.w_nusd = [0, 0, 0]
        self.total_nusd = [0, 0, 0]
        self.pct_s = np.zeros(n_type)  # share-% × seconds held per type, this window
        self.total_pct_s = np.zeros(n_type)
        self.energy_total = 0.0  # joules drawn by GPUs in use
        self.cap_units = np.zeros((n_dep, n_type))
        self.gpus_sum, self.peak_gpus = 0.0, 0
        self.w_gpu_sum = 0.0
        self.w_gpus = np.zeros(n_windows)
        self.replica_sum = np.zeros(n_dep)
        self.replica_peak = np.zeros(n_dep, dtype=np.int64)
        self.repacked_sum = 0.0
        self.repacked_nusd = 0
        self.max_clients = settings.placement.max_mps_clients_per_gpu
        self.dep_mib = [math.ceil(d.memory_gb * 1024) for d in run.deps]

    def interval(self, step: float) -> None:
        """Advance the twin one control interval and book what was held during it."""
        run = self.run
        shares: dict[int, list[int]] = {}
        per_dep = np.zeros(len(run.deps), dtype=np.int64)
        clients = run.clients()
        for r in run.replicas:  # held through the interval: binds happen between intervals
            shares.setdefault(run.gpu_row[r.gpu], []).append(r.share_pct)
            per_dep[r.deployment] += 1
            self.cap_units[r.deployment, self.types.index(r.gpu_type)] += \
                1.0 / run.perf.slowdown(clients[r.gpu] - 1) / self.per_window
        run.twin.step(step)
        self.telemetry = run.twin.telemetry()
        energy = _energy(self.telemetry, run.gpu_row, len(run.gpu_keys))
        drawn = energy - self.last_energy
        self.last_energy = energy
        held = np.zeros(len(run.gpu_keys), dtype=np.int64)
        for row, on_gpu in shares.items():
            joules = max(float(drawn[row]), 0.0)
            split = gpu_cost(shares=on_gpu,
                             price_nusd=self.prices.gpu_nusd(run.gpu_types[row], step),
                             energy_nusd=self.prices.energy_nusd(joules))
            self.w_nusd[0] += split.gpu_nusd
            self.w_nusd[1] += split.energy_nusd
            self.w_nusd[2] += split.idle_nusd
            self.energy_total += joules
            held[row] = sum(on_gpu)
        self.pct_s += np.bincount(self.type_of, weights=np.minimum(held, 100) * step,
                                  minlength=len(self.types))
        used = len(shares)
        for gpu_type, count in repacked(run.replicas, run.catalog, self.dep_mib,
                                        self.max_clients).items():
            self.repacked_sum += count
            self.repacked_nusd += count * self.prices.gpu_nusd(gpu_type, step)
        self.gpus_sum += used
        self.w_gpu_sum += used
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
        met = _met(self.run)
        self.w_within[w] = met - self.window_met
        self.window_counts, self.window_hists, self.window_met = counts, hists, met
        # A last, shorter window is averaged over its own length.
        self.w_capacity[w] = self.cap_units * self.per_window / \
            ((self.k - 1) % self.per_window + 1)
        self.cap_units[:] = 0.0
        self.w_gpus[w] = self.w_gpu_sum / ((self.k - 1) % self.per_window + 1)
        self.w_gpu_sum = 0.0
        self.window_costs.append(usd(self.w_nusd[0] + self.w_nusd[1]))
        self.total_nusd = [t + v for t, v in zip(self.total_nusd, self.w_nusd, strict=True)]
        self.w_nusd = [0, 0, 0]
        self.total_pct_s += self.pct_s
        self.pct_s[:] = 0.0

    def result(self, *, name: str, window_s: float) -> PolicyResult:
        run, deps, steps = self.run, self.run.deps, self.steps
        last_counts, _ = _counters(self.telemetry, deps)
        totals = last_counts - self.first_counts
        within = _met(run) - self.first_met
        per_deployment = tuple(
            DeploymentResult(name=dep.name, sla_s=dep.sla_s, requests=int(totals[d, 0]),
                             succeeded=int(totals[d, 1]), within_sla=round(float(within[d])),
                             mean_replicas=float(self.replica_sum[d] / steps),
                             peak_replicas=int(self.replica_peak[d]))
            for d, dep in enumerate(deps))
        gpu_nusd, energy_nusd, idle_nusd = self.total_nusd
        return PolicyResult(
            policy=name, duration_s=steps * run.rule.control_interval_s, window_s=window_s,
            requests=int(totals[:, 0].sum()), succeeded=int(totals[:, 1].sum()),
            within_sla=round(float(within.sum())),
            cost=usd(gpu_nusd + energy_nusd), gpu_cost=usd(gpu_nusd),
            energy_cost=usd(energy_nusd), idle_cost=usd(idle_nusd),
            energy_j=self.energy_total,
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
                         for i, t in enumerate(self.types)},
            window_gpus=self.w_gpus.copy(),
            repacked_mean_gpus=self.repacked_sum / steps,
            repacked_gpu_cost=usd(self.repacked_nusd))


def repacked(replicas: Sequence[Replica], catalog: Catalog, dep_mib: Sequence[int],
             max_clients: int) -> dict[str, int]:
    """Per GPU type: the GPUs that the replicas now on that type fill when packed first-fit
    decreasing (by share, then memory), each GPU within 100 % share, its memory and
    ``max_clients`` MPS clients (``dep_mib``: each deployment's memory)."""
    items: dict[str, list[tuple[int, int]]] = {}
    for r in replicas:
        items.setdefault(r.gpu_type, []).append((r.share_pct, dep_mib[r.deployment]))
    out = {}
    for gpu_type, sized in items.items():
        mem = int(catalog[gpu_type].memory_mib)
        bins: list[list[int]] = []  # [share, MiB, clients] held
        for share, mib in sorted(sized, reverse=True):
            for b in bins:
                if b[0] + share <= 100 and b[1] + mib <= mem and b[2] < max_clients:
                    b[0] += share
                    b[1] += mib
                    b[2] += 1
                    break
            else:
                bins.append([share, mib, 1])
        out[gpu_type] = len(bins)
    return out


def _met(run: Harness) -> np.ndarray:
    """Per deployment: requests so far that met every objective it states (the twin
    counts them request by request, so meeting TTFT *and* TPOT is exact)."""
    met = run.twin.slo_met()
    return np.array([float(met.get((d.namespace, d.name), 0)) for d in run.deps])


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
