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
from core.cost.formula import (
    HOUR_S,
    IDLE_MODEL,
    Prices,
    gpu_split,
    per_inference,
    split_exact,
)
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
        """Cost lines of the interval from ``prev`` to ``cur`` under ``layout``, one per
        key (``merge_lines``: two slices of one model on one GPU are one line)."""
        dt = cur.timestamp - prev.timestamp
        if not dt > 0 or dt > self.max_interval_s:
            return []
        bucket = hour_of(prev.timestamp + dt / 2)
        prev_gpus = {(g.node, g.gpu_index): g for g in prev.gpus}
        cur_gpus = {(g.node, g.gpu_index): g for g in cur.gpus}
        namespace_of = self._namespaces(cur, prev)

        prices = self.prices
        # One row per line, in line order: (model, namespace, node, gpu index, gpu type,
        # then the amounts in ``CostAmounts`` order). Lines are built once, at the end.
        rows: list[_Row] = []
        # (deployment key) -> [(line index, weight)] for the inference split.
        replicas: dict[tuple[str, str], list[tuple[int, float]]] = {}
        gpus_seen: set[tuple[str, int]] = set()
        # Lines of one key are merged at the end, as merge_lines does: on one GPU (a model
        # twice there) its span of rows; across GPUs (a GPU twice in the layout) all rows.
        spans: list[tuple[int, int]] = []
        repeated = False
        for node in layout:
            name = node.name
            for gpu in node.gpus:
                slices = gpu.slices
                if not slices:
                    continue  # released to the pool: costs nothing
                index, gpu_type = gpu.index, gpu.gpu_type
                key = (name, index)
                repeated = repeated or key in gpus_seen
                gpus_seen.add(key)
                cur_gpu = cur_gpus.get(key)
                kwh, energy = prices.energy(_energy_j(prev_gpus.get(key), cur_gpu, dt))
                price = prices.gpu_nusd(gpu_type, dt)  # cached by type and period
                shares = tuple(int(sl.thread_pct) for sl in slices)
                gpu_parts, energy_parts, whole = gpu_split(shares, price, energy)
                held = sum(shares)
                g_qps = cur_gpu.qps_1m if cur_gpu is not None else 0.0
                first = len(rows)
                holders = []
                for i, sl in enumerate(slices):
                    model = sl.model or sl.owner
                    namespace = namespace_of(model, name)
                    holders.append((namespace, model))
                    replicas.setdefault((namespace, model), []).append(
                        (len(rows), g_qps * sl.thread_pct / held))
                    rows.append((model, namespace, name, index, gpu_type,
                                 dt * sl.thread_pct / whole, 0.0, kwh * sl.thread_pct / whole,
                                 gpu_parts[i], energy_parts[i], 0, 0))
                idle_pct = whole - held
                if idle_pct:
                    rows.append((IDLE_MODEL, IDLE_MODEL, name, index, gpu_type,
                                 0.0, dt * idle_pct / whole, kwh * idle_pct / whole,
                                 0, 0, gpu_parts[-1] + energy_parts[-1], 0))
                # (A held line never has the idle line's key: a slice's owner is not empty.)
                if len(holders) > 1 and len(set(holders)) < len(holders):
                    spans.append((first, len(rows)))

        prev_deps = {(d.namespace, d.model): d for d in prev.deployments}
        for d in cur.deployments:
            targets = replicas.get((d.namespace, d.model))
            served = _inferences(prev_deps.get((d.namespace, d.model)), d, dt)
            if not targets or served <= 0:
                continue
            weights = [round(w * 1_000_000) for _, w in targets]
            if sum(weights) <= 0:  # no GPU reports traffic: by thread share
                weights = [round(rows[i][5] * 1_000_000) or 1 for i, _ in targets]
            counts = split_exact(served, weights)
            for (i, _), n in zip(targets, counts, strict=True):
                if n:  # as ``amounts + CostAmounts(inferences=n)`` adds them
                    r = rows[i]
                    rows[i] = (*r[:5], r[5] + 0.0, r[6] + 0.0, r[7] + 0.0, r[8], r[9], r[10],
                               r[11] + n)
        if repeated:
            rows = _merged(rows)
        elif spans:
            merged: list[_Row] = []
            done = 0
            for start, end in spans:
                merged += rows[done:start]
                merged += _merged(rows[start:end])
                done = end
            rows = merged + rows[done:]
        # Positional, in the field order of CostLine and CostAmounts (the fastest way).
        return [CostLine(bucket, r[0], r[1], r[2], r[3], r[4],
                         CostAmounts(r[5], r[6], r[7], r[8], r[9], r[10], r[11]))
                for r in rows]

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


_Row = tuple[str, str, str, int, str, float, float, float, int, int, int, int]


def _merged(rows: Iterable[_Row]) -> list[_Row]:
    """``merge_lines`` over rows: one per key, amounts added (``CostAmounts.__add__``) in
    order, the type of the last."""
    out: dict[tuple[str, str, str, int], _Row] = {}
    for r in rows:
        key = (r[0], r[1], r[2], r[3])
        seen = out.get(key)
        out[key] = r if seen is None else (
            *key, r[4], seen[5] + r[5], seen[6] + r[6], seen[7] + r[7], seen[8] + r[8],
            seen[9] + r[9], seen[10] + r[10], seen[11] + r[11])
    return list(out.values())


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
