"""Cost accounting (SPEC §3.8): what each model server costs, per interval, hour and day.

Why: the console reports $/inference per model, node, GPU type, namespace and
day, and the idle cost of GPUs that are in use but not fully allocated. This
module turns two consecutive telemetry readings plus the fleet layout (who
holds which MPS share of which GPU) into cost lines, groups lines into report
rows and writes those rows as CSV. Pure: no I/O, no clock.

Attribution rules (the invariants the tests hold it to):

- Layout: the layout observed with an interval's first reading is taken as
  held for the whole interval (the one observed with the second reading when
  the first is unknown). A change shows from the next interval on.
- Released GPUs: a GPU with no MPS slice hosts no model server; it is back in
  the pool and yields no line at all, energy included.
- GPU cost: a GPU with at least one slice costs its GPU-hour price for the
  whole interval. Each slice pays price × its thread share × dt; the unheld
  share is an *idle* line (``model == ""``, ``namespace == ""``). Per GPU and
  interval, held + idle GPU cost equals round(price × dt) exactly (integer
  nano-dollars, split by largest remainder). Shares over 100 % (never expected)
  are scaled down to 100 %. A GPU type missing from the catalog has price 0.
- Energy: the energy counter's increase; when the counter is missing (reads 0)
  or went backwards (exporter or driver restart), the mean of the two power
  readings × dt (or the one reading there is; none when the GPU has no reading,
  e.g. its node is unreachable). All energy of a GPU in use goes
  to its holders in proportion to their thread shares; the idle line carries
  GPU price only. This matches ``FleetTotals``: ``cost_per_hour`` includes the
  whole power of GPUs in use and ``idle_cost_per_hour`` is GPU price only.
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
  Cost per inference is (GPU cost + energy cost) ÷ inferences: idle cost is
  reported beside it, never inside it.
- CSV: every text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
  return gets a leading ``'`` (formula injection); numeric cells are written as
  numbers and left alone (a number cannot carry a formula; costs are never
  negative).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

from core.catalog import Catalog
from core.errors import ValidationError
from core.model import Node
from core.telemetry import DeploymentTelemetry, FleetTelemetry, GpuTelemetry

NANO = 10**9
HOUR_S = 3600
JOULES_PER_KWH = Decimal(3_600_000)
IDLE_MODEL = ""  # the model (and namespace) of an idle line
UNALLOCATED = "(unallocated)"  # how an idle line's model/namespace reads in reports

# Report dimensions, in the order they are offered, with their column titles.
DIMENSIONS: Mapping[str, str] = {
    "model": "model",
    "namespace": "namespace",
    "node": "node",
    "gpu_type": "GPU type",
    "day": "day (UTC)",
}

_PER_INFERENCE = Decimal("1e-12")
_PER_1K = Decimal("1e-9")
_USD = Decimal("1e-9")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class CostAmounts:
    """Additive cost figures: lines and groups both carry one of these."""

    share_seconds: float = 0.0  # GPU-seconds × share held (1 GPU, 1 h, 50 % = 1800)
    idle_share_seconds: float = 0.0  # GPU-seconds × share unheld, on GPUs in use
    energy_kwh: float = 0.0
    gpu_cost_nusd: int = 0
    energy_cost_nusd: int = 0
    idle_cost_nusd: int = 0
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
        """What the servers cost: their GPU shares plus the GPUs' energy."""
        return self.gpu_cost_nusd + self.energy_cost_nusd

    @property
    def total_cost_nusd(self) -> int:
        return self.held_cost_nusd + self.idle_cost_nusd

    @property
    def cost_per_inference(self) -> Decimal | None:
        """US dollars per inference (held cost only); ``None`` without inferences."""
        if self.inferences <= 0:
            return None
        return (Decimal(self.held_cost_nusd) / NANO / self.inferences).quantize(
            _PER_INFERENCE, rounding=ROUND_HALF_EVEN)

    @property
    def cost_per_1k(self) -> Decimal | None:
        """US dollars per 1,000 inferences; ``None`` without inferences."""
        if self.inferences <= 0:
            return None
        return (Decimal(self.held_cost_nusd) * 1000 / NANO / self.inferences).quantize(
            _PER_1K, rounding=ROUND_HALF_EVEN)

    @property
    def gpu_hours(self) -> float:
        """GPU-hours held (share-weighted)."""
        return self.share_seconds / HOUR_S

    @property
    def idle_gpu_hours(self) -> float:
        return self.idle_share_seconds / HOUR_S


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


def usd(nusd: int) -> Decimal:
    """Nano-dollars as dollars, exactly."""
    return (Decimal(nusd) / NANO).quantize(_USD)


def hour_of(ts: float) -> int:
    return int(ts // HOUR_S) * HOUR_S


def day_of(bucket_start: int) -> str:
    return datetime.fromtimestamp(bucket_start, UTC).date().isoformat()


def split_exact(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to integer ``weights`` (largest remainder).

    The parts sum to ``total`` exactly; ties go to the earlier weight. All-zero
    weights give all-zero parts (and ``total`` must then be 0 to be conserved:
    callers never split a non-zero total over nothing).
    """
    denominator = sum(weights)
    if denominator <= 0 or total == 0:
        return [0] * len(weights)
    parts = [total * w // denominator for w in weights]
    remainders = [total * w % denominator for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


LineKey = tuple[int, str, str, str, int]


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


# --------------------------------------------------------------------------- accounting


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
        self.default_namespace = default_namespace
        self.max_interval_s = max_interval_s
        self._price_nusd_per_h = {name: t.price_per_gpu_hour * NANO
                                  for name, t in catalog.types.items()}
        self._kwh_nusd = catalog.electricity_per_kwh * NANO

    def interval(self, *, prev: FleetTelemetry, cur: FleetTelemetry,
                 layout: Sequence[Node]) -> list[CostLine]:
        """Cost lines of the interval from ``prev`` to ``cur`` under ``layout``."""
        dt = cur.timestamp - prev.timestamp
        if not dt > 0 or dt > self.max_interval_s:
            return []
        dt_us = round(dt * 1_000_000)
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
                held = sum(h.thread_pct for h in holders)
                whole = max(100, held)
                idle_pct = whole - held
                price = self._price_nusd_per_h.get(gpu.gpu_type, Decimal(0))
                gpu_total = _round(price * dt_us / (HOUR_S * 1_000_000))
                gpu_parts = split_exact(gpu_total, [h.thread_pct for h in holders] + [idle_pct])
                key = (node.name, gpu.index)
                joules = _energy_j(prev_gpus.get(key), cur_gpus.get(key), dt)
                kwh = Decimal(f"{joules:.3f}") / JOULES_PER_KWH
                energy_parts = split_exact(_round(kwh * self._kwh_nusd),
                                           [h.thread_pct for h in holders])
                g_qps = cur_gpus[key].qps_1m if key in cur_gpus else 0.0
                # gpu_parts ends with the idle part, which no holder takes.
                for h, gpu_cost, energy_cost in zip(holders, gpu_parts, energy_parts,
                                                    strict=False):
                    replicas.setdefault((h.namespace, h.model), []).append(
                        (len(lines), g_qps * h.thread_pct / held))
                    lines.append(CostLine(
                        bucket_start=bucket, model=h.model, namespace=h.namespace,
                        node=node.name, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                        amounts=CostAmounts(
                            share_seconds=dt * h.thread_pct / whole,
                            energy_kwh=float(kwh) * h.thread_pct / held,
                            gpu_cost_nusd=gpu_cost, energy_cost_nusd=energy_cost)))
                if idle_pct:
                    lines.append(CostLine(
                        bucket_start=bucket, model=IDLE_MODEL, namespace=IDLE_MODEL,
                        node=node.name, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                        amounts=CostAmounts(idle_share_seconds=dt * idle_pct / whole,
                                            idle_cost_nusd=gpu_parts[-1])))

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


def _round(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


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


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class CostGroup:
    """One report row: the group's key (one value per dimension) and its sums."""

    key: tuple[str, ...]
    amounts: CostAmounts


def check_dimensions(by: Sequence[str]) -> tuple[str, ...]:
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise ValidationError("group_by", f"unknown dimension {unknown[0]!r}; "
                              f"choose from {', '.join(DIMENSIONS)}")
    if len(set(by)) != len(by):
        raise ValidationError("group_by", "names a dimension twice")
    return tuple(by)


def dimension_value(line: CostLine, dimension: str) -> str:
    if dimension == "model":
        return line.model or UNALLOCATED
    if dimension == "namespace":
        return line.namespace or UNALLOCATED
    if dimension == "node":
        return line.node
    if dimension == "gpu_type":
        return line.gpu_type
    if dimension == "day":
        return day_of(line.bucket_start)
    raise ValidationError("group_by", f"unknown dimension {dimension!r}")


def group_lines(lines: Iterable[CostLine], *, by: Sequence[str]) -> list[CostGroup]:
    """Lines summed per value of the ``by`` dimensions, sorted by key."""
    by = check_dimensions(by)
    sums: dict[tuple[str, ...], CostAmounts] = {}
    for line in lines:
        key = tuple(dimension_value(line, d) for d in by)
        sums[key] = sums.get(key, CostAmounts()) + line.amounts
    return [CostGroup(key=k, amounts=sums[k]) for k in sorted(sums)]


def filter_groups(groups: Iterable[CostGroup], text: str) -> list[CostGroup]:
    """Groups with ``text`` in any part of their key (case-insensitive); all when blank."""
    needle = text.strip().lower()
    if not needle:
        return list(groups)
    return [g for g in groups if any(needle in part.lower() for part in g.key)]


def total(groups: Iterable[CostGroup]) -> CostAmounts:
    out = CostAmounts()
    for g in groups:
        out = out + g.amounts
    return out


REPORT_FIGURES = ("inferences", "cost per 1k inferences ($)", "cost per inference ($)",
                  "GPU cost ($)", "energy cost ($)", "held cost ($)", "idle cost ($)",
                  "energy (kWh)", "GPU-hours held", "GPU-hours idle")

Cell = str | int | float | Decimal | None


def report_columns(by: Sequence[str]) -> list[str]:
    return [DIMENSIONS[d] for d in check_dimensions(by)] + list(REPORT_FIGURES)


def report_rows(groups: Iterable[CostGroup], *, by: Sequence[str]) -> list[dict[str, Cell]]:
    """The report as rows of (column → value): what the table shows and the CSV holds.

    Money is exact ``Decimal`` dollars (cost per inference to 1e-12 $); energy
    and GPU-hours are rounded to 6 decimals.
    """
    columns = report_columns(by)
    rows = []
    for g in groups:
        a = g.amounts
        figures: list[Cell] = [
            a.inferences, a.cost_per_1k, a.cost_per_inference, usd(a.gpu_cost_nusd),
            usd(a.energy_cost_nusd), usd(a.held_cost_nusd), usd(a.idle_cost_nusd),
            round(a.energy_kwh, 6), round(a.gpu_hours, 6), round(a.idle_gpu_hours, 6)]
        rows.append(dict(zip(columns, [*g.key, *figures], strict=True)))
    return rows


def neutralize(cell: str) -> str:
    """A text cell a spreadsheet would run as a formula, made inert with a leading quote."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def _csv_cell(value: Cell) -> str | int | float:
    # Numbers are written as numbers: a number cannot carry a formula (and cost
    # figures are never negative). Every text cell is neutralized.
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | float):
        return value
    return neutralize(str(value))


def to_csv(rows: Sequence[Mapping[str, Cell]], *, columns: Sequence[str]) -> str:
    """RFC 4180 CSV of ``rows`` with formula-injection neutralization of text cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([neutralize(c) for c in columns])
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buffer.getvalue()
