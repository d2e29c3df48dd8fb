"""The cost ledger's lines (SPEC §3.8): what each model server cost, per interval and hour.

Why: the console reports $/inference per model, node, GPU type, namespace and
day, with the idle cost of GPUs in use but not fully allocated as its own
line. This module turns two consecutive telemetry readings plus the fleet
layout (who holds which MPS share of which GPU) into cost lines, pricing each
GPU with the one formula (``core.cost.formula.gpu_cost``). Pure: no I/O, no
clock.

Attribution rules (the invariants the tests hold it to):

- Layout: the layout observed with an interval's first reading is taken as
  held for the whole interval (the one observed with the second reading when
  the first is unknown). A change shows from the next interval on.
- Cost per GPU: ``gpu_cost`` — a GPU with no slice costs nothing and yields no
  line, energy included; a GPU with at least one costs its whole price plus
  its energy, split by thread share; the unheld share (price and energy) is an
  *idle* line (``model == ""``, ``namespace == ""``) whose ``idle_cost_nusd``
  holds both parts. Per GPU and interval, the lines' money sums exactly to
  round(price × dt) + round(energy × price per kWh).
- Energy: the energy counter's increase; when the counter is missing (reads 0)
  or went backwards (exporter or driver restart), the mean of the two power
  readings × dt (or the one reading there is; none when the GPU has no reading,
  e.g. its node is unreachable).
- Inferences: a deployment's ``success_total`` increase (after a counter reset,
  the new value, like Prometheus' ``increase``); without counters on both
  readings, round(qps_1m × dt) of the later reading. The count is split over
  the deployment's slices in the layout by weight = the GPU's qps_1m × the
  slice's part of the threads held on that GPU (by thread share alone when
  none of the deployment's GPUs reports traffic), as integers by largest
  remainder, so the split sums to the deployment's count. Inferences of a
  deployment that holds no slice in the layout are not attributed.
- Namespace: slices name a model, not a namespace; a slice belongs to the
  deployment of its model (the one running on the slice's node when several
  namespaces run that model, else the first by name), or to
  ``default_namespace`` when no deployment of the model is reported.
- Buckets: each interval is booked whole into the UTC hour that holds its
  midpoint. Intervals of 0 s or less, or longer than ``max_interval_s`` (a
  gap in sampling), are not booked.
- Money is integer nano-dollars (exact sums); report figures are ``Decimal``.
  Cost per inference is the total cost (held + idle) ÷ inferences: a model's
  group holds no idle line, the fleet's total holds them all (SPEC §3.8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from core.catalog import Catalog
from core.cost.formula import HOUR_S, IDLE_MODEL, Prices, gpu_cost, per_inference, split_exact
from core.errors import ValidationError
from core.model import Node
from core.telemetry import DeploymentTelemetry, FleetTelemetry, GpuTelemetry


@dataclass(frozen=True, slots=True)
class CostAmounts:
    """Additive cost figures: lines and groups both carry one of these."""

    share_seconds: float = 0.0  # GPU-seconds × share held (1 GPU, 1 h, 50 % = 1800)
    idle_share_seconds: float = 0.0  # GPU-seconds × share unheld, on GPUs in use
    energy_kwh: float = 0.0
    gpu_cost_nusd: int = 0  # the held shares' part of the GPU price
    energy_cost_nusd: int = 0  # the held shares' part of the energy
    idle_cost_nusd: int = 0  # the unheld share's part of both
    inferences: int = 0

    def __add__(self, other: CostAmounts) -> CostAmounts:
        return CostAmounts(
            share_seconds=self.share_seconds + other.share_seconds,
            idle_share_seconds=self.idle_share_seconds + other.idle_share_seconds,
            energy_kwh=self.energy_kwh + other.energy_kwh,
            gpu_cost_nusd=self.gpu_cost_nusd + other.gpu_cost_nusd,
            energy_cost_nusd=self.energy_cost_nusd + other.energy_cost_nusd,
            idle_cost_nusd=self.idle_cost_nusd + other.idle_cost_nusd,
            inferences=self.inferences + other.inferences)

    @property
    def held_cost_nusd(self) -> int:
        """What the servers cost: their shares of the GPU price and of the energy."""
        return self.gpu_cost_nusd + self.energy_cost_nusd

    @property
    def total_cost_nusd(self) -> int:
        """Held plus idle: what the fleet pays (SPEC §3.8)."""
        return self.held_cost_nusd + self.idle_cost_nusd

    @property
    def cost_per_inference(self) -> Decimal | None:
        """US dollars per inference (total cost, idle included); ``None`` without inferences."""
        return per_inference(self.total_cost_nusd, self.inferences)

    @property
    def cost_per_1k(self) -> Decimal | None:
        """US dollars per 1,000 inferences (idle included); ``None`` without inferences."""
        return per_inference(self.total_cost_nusd, self.inferences, per=1000)

    @property
    def gpu_hours(self) -> float:
        """GPU-hours held (share-weighted)."""
        return self.share_seconds / HOUR_S

    @property
    def idle_gpu_hours(self) -> float:
        return self.idle_share_seconds / HOUR_S


LineKey = tuple[int, str, str, str, int]


@dataclass(frozen=True, slots=True)
class CostLine:
    """Cost of one (model, namespace) on one GPU within one UTC hour."""

    bucket_start: int  # epoch seconds, a whole UTC hour
    model: str  # IDLE_MODEL for the unheld share of a GPU in use
    namespace: str
    node: str
    gpu_index: int
    gpu_type: str
    amounts: CostAmounts

    @property
    def key(self) -> LineKey:
        return (self.bucket_start, self.model, self.namespace, self.node, self.gpu_index)

    @property
    def is_idle(self) -> bool:
        return self.model == IDLE_MODEL


def hour_of(ts: float) -> int:
    return int(ts // HOUR_S) * HOUR_S


def day_of(bucket_start: int) -> str:
    return datetime.fromtimestamp(bucket_start, UTC).date().isoformat()


def accumulate(into: dict[LineKey, CostLine], lines: Iterable[CostLine]) -> None:
    """Add ``lines`` into ``into`` (one line per key, amounts summed), in place."""
    for line in lines:
        seen = into.get(line.key)
        into[line.key] = line if seen is None else CostLine(
            bucket_start=line.bucket_start, model=line.model, namespace=line.namespace,
            node=line.node, gpu_index=line.gpu_index, gpu_type=line.gpu_type,
            amounts=seen.amounts + line.amounts)


def merge_lines(lines: Iterable[CostLine]) -> list[CostLine]:
    """One line per key (bucket, model, namespace, node, GPU), amounts summed."""
    merged: dict[LineKey, CostLine] = {}
    accumulate(merged, lines)
    return list(merged.values())


@dataclass(frozen=True, slots=True)
class _Holder:
    model: str
    namespace: str
    thread_pct: int


class CostAccountant:
    """Turns (earlier reading, later reading, layout) into cost lines; see the module rules."""

    def __init__(self, catalog: Catalog, *, default_namespace: str = "default",
                 max_interval_s: float = 3600.0) -> None:
        if max_interval_s <= 0:
            raise ValidationError("cost.max_interval_s", "must be > 0")
        self.catalog = catalog
        self.prices = Prices.of(catalog)
        self.default_namespace = default_namespace
        self.max_interval_s = max_interval_s

    def interval(self, *, prev: FleetTelemetry, cur: FleetTelemetry,
                 layout: Sequence[Node]) -> list[CostLine]:
        """Cost lines of the interval from ``prev`` to ``cur`` under ``layout``."""
        dt = cur.timestamp - prev.timestamp
        if not dt > 0 or dt > self.max_interval_s:
            return []
        bucket = hour_of(prev.timestamp + dt / 2)
        prev_gpus = {(g.node, g.gpu_index): g for g in prev.gpus}
        cur_gpus = {(g.node, g.gpu_index): g for g in cur.gpus}
        namespace_of = self._namespaces(cur, prev)

        lines: list[CostLine] = []
        # (deployment key) -> [(line index, weight)] for the inference split.
        replicas: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for node in layout:
            for gpu in node.gpus:
                if not gpu.slices:
                    continue  # released to the pool: costs nothing
                holders = [_Holder(model=sl.model or sl.owner,
                                   namespace=namespace_of(sl.model or sl.owner, node.name),
                                   thread_pct=sl.thread_pct) for sl in gpu.slices]
                key = (node.name, gpu.index)
                joules = _energy_j(prev_gpus.get(key), cur_gpus.get(key), dt)
                kwh = float(self.prices.kwh(joules))
                split = gpu_cost(shares=[h.thread_pct for h in holders],
                                 price_nusd=self.prices.gpu_nusd(gpu.gpu_type, dt),
                                 energy_nusd=self.prices.energy_nusd(joules))
                held = sum(split.shares)
                whole = split.whole_pct
                g_qps = cur_gpus[key].qps_1m if key in cur_gpus else 0.0
                for i, h in enumerate(holders):
                    replicas.setdefault((h.namespace, h.model), []).append(
                        (len(lines), g_qps * h.thread_pct / held))
                    lines.append(CostLine(
                        bucket_start=bucket, model=h.model, namespace=h.namespace,
                        node=node.name, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                        amounts=CostAmounts(
                            share_seconds=dt * h.thread_pct / whole,
                            energy_kwh=kwh * h.thread_pct / whole,
                            gpu_cost_nusd=split.held_gpu_nusd[i],
                            energy_cost_nusd=split.held_energy_nusd[i])))
                if split.idle_pct:
                    lines.append(CostLine(
                        bucket_start=bucket, model=IDLE_MODEL, namespace=IDLE_MODEL,
                        node=node.name, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                        amounts=CostAmounts(idle_share_seconds=dt * split.idle_pct / whole,
                                            energy_kwh=kwh * split.idle_pct / whole,
                                            idle_cost_nusd=split.idle_nusd)))

        prev_deps = {(d.namespace, d.model): d for d in prev.deployments}
        for d in cur.deployments:
            targets = replicas.get((d.namespace, d.model))
            served = _inferences(prev_deps.get((d.namespace, d.model)), d, dt)
            if not targets or served <= 0:
                continue
            weights = [round(w * 1_000_000) for _, w in targets]
            if sum(weights) <= 0:  # no GPU reports traffic: by thread share
                weights = [round(lines[i].amounts.share_seconds * 1_000_000) or 1
                           for i, _ in targets]
            counts = split_exact(served, weights)
            for (i, _), n in zip(targets, counts, strict=True):
                if n:
                    line = lines[i]
                    lines[i] = CostLine(
                        bucket_start=line.bucket_start, model=line.model,
                        namespace=line.namespace, node=line.node, gpu_index=line.gpu_index,
                        gpu_type=line.gpu_type,
                        amounts=line.amounts + CostAmounts(inferences=n))
        return merge_lines(lines)

    def _namespaces(self, cur: FleetTelemetry, prev: FleetTelemetry
                    ) -> Callable[[str, str], str]:
        by_model: dict[str, list[DeploymentTelemetry]] = {}
        for d in (*cur.deployments, *prev.deployments):
            if all(d.namespace != e.namespace for e in by_model.get(d.model, [])):
                by_model.setdefault(d.model, []).append(d)
        for deps in by_model.values():
            deps.sort(key=lambda e: e.namespace)
        default = self.default_namespace

        def namespace_of(model: str, node: str) -> str:
            deps = by_model.get(model)
            if not deps:
                return default
            if len(deps) > 1:
                for d in deps:
                    if node in d.nodes:
                        return d.namespace
            return deps[0].namespace

        return namespace_of


def _energy_j(prev: GpuTelemetry | None, cur: GpuTelemetry | None, dt: float) -> float:
    """Energy over the interval: the counter's increase, else power × dt."""
    if prev is not None and cur is not None and 0 < prev.energy_j <= cur.energy_j:
        return cur.energy_j - prev.energy_j
    watts = [g.power_w for g in (prev, cur) if g is not None]
    return sum(watts) / len(watts) * dt if watts else 0.0


def _inferences(prev: DeploymentTelemetry | None, cur: DeploymentTelemetry, dt: float) -> int:
    if prev is not None and prev.counters is not None and cur.counters is not None:
        before, after = prev.counters.success_total, cur.counters.success_total
        return after - before if after >= before else after
    return round(cur.qps_1m * dt)
