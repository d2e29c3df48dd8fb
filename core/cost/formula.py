"""The one cost formula (SPEC §3.8, corrected): measurements plus layout in, money out.

Why: the Overview, the monitor's stored series, the autoscaler, the feedback
loop, the placement-quality replay and the cost ledger all price the fleet.
They used to do it five ways; now each calls the rule below, so the figure no
longer depends on which metrics source is active. Sources (the twin, the
Prometheus adapter) report measurements only.

The rule, per GPU and period (an interval, or one hour for a rate):

- A GPU that hosts no model server (no MPS slice in the layout) is released to
  the pool and costs nothing, its energy included.
- A GPU that hosts at least one costs its GPU-hour price × the period, WHOLE,
  plus the energy it drew × the price per kWh.
- That cost (price and energy alike) is attributed to the GPU's slices by the
  share of SM threads each holds (``thread_pct`` of 100; shares summing over
  100, never expected, are scaled down to 100). The unallocated share is its
  own *idle* part, shown separately and counted in the totals.
- Money is integer nano-dollars, split by largest remainder, so per GPU the
  parts sum exactly to round(price × period) and round(energy × price).
- Cost per inference of the fleet = (price of every GPU in use + energy) ÷
  inferences served, idle included; ``None`` when nothing was served (unknown:
  neither 0 nor infinite).
- A GPU type missing from the catalog has price 0; a GPU in use without a
  reading (its node's exporter unreachable) adds no energy.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from types import MappingProxyType

from core.catalog import Catalog
from core.model import Node
from core.telemetry import FleetTelemetry, GpuTelemetry

NANO = 10**9
HOUR_S = 3600
JOULES_PER_KWH = Decimal(3_600_000)
IDLE_MODEL = ""  # the model (and owner, and namespace) of an idle part

_USD = Decimal("1e-9")
_PER_INFERENCE = Decimal("1e-12")
_PER_1K = Decimal("1e-9")


def usd(nusd: int) -> Decimal:
    """Nano-dollars as dollars, exactly."""
    return (Decimal(nusd) / NANO).quantize(_USD)


def split_exact(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to integer ``weights`` (largest remainder).

    The parts sum to ``total`` exactly; ties go to the earlier weight. All-zero
    weights give all-zero parts (and ``total`` must then be 0 to be conserved:
    callers never split a non-zero total over nothing).

    Uncached: its callers split totals that rarely repeat (a deployment's inferences
    over its replicas' traffic). Cached, such keys only filled the cache: at 5,000 GPUs
    8,192 entries of a few hundred weights each held ~100 MB for nothing.
    """
    return list(_split_once(int(total), tuple(int(w) for w in weights)))


def _split_once(total: int, weights: tuple[int, ...]) -> tuple[int, ...]:
    """``split_exact`` uncached: for totals that rarely repeat (a GPU's energy)."""
    denominator = sum(weights)
    if denominator <= 0 or total == 0:
        return (0,) * len(weights)
    if len(weights) == 2:  # one slice and the idle share: the commonest GPU
        first, rest = divmod(total * weights[0], denominator)
        second, rest_second = divmod(total * weights[1], denominator)
        if first + second == total:
            return first, second
        # One short (two parts): to the larger remainder, the first on a tie.
        return (first + 1, second) if rest >= rest_second else (first, second + 1)
    parts = [total * w // denominator for w in weights]
    short = total - sum(parts)
    if short:
        remainders = [total * w % denominator for w in weights]
        # Largest remainder first, the earlier on a tie (a stable sort keeps their order).
        order = sorted(range(len(weights)), key=remainders.__getitem__, reverse=True)
        for i in order[:short]:
            parts[i] += 1
    return tuple(parts)


# Cached: a fleet's GPUs split the same price over the same few share patterns (energy,
# which differs GPU by GPU, and inferences are split by ``_split_once``: they never
# repeat, and would only evict them).
_split = lru_cache(maxsize=8192)(_split_once)


@lru_cache(maxsize=4096)
def _weights(shares: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The split weights of a GPU whose slices hold ``shares`` (the idle share last), and
    the whole (100, or the shares' sum when they exceed it)."""
    held = sum(shares)
    whole = max(100, held)
    return (*shares, whole - held), whole


def gpu_split(shares: tuple[int, ...], price_nusd: int, energy_nusd: int
               ) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """``gpu_cost``'s arithmetic without the object: (price parts, energy parts, whole),
    the parts parallel to ``shares`` plus the idle part last."""
    weights, whole = _weights(shares)
    return _split(price_nusd, weights), _split_once(energy_nusd, weights), whole


def _round(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def per_inference(cost_nusd: int, inferences: float, *, per: int = 1) -> Decimal | None:
    """US dollars per ``per`` inferences (to 1e-12 $ per inference, 1e-9 $ per 1,000);
    ``None`` when nothing was served: unknown, neither 0 nor infinite."""
    if not (inferences > 0 and math.isfinite(inferences)):
        return None
    served = Decimal(inferences) if isinstance(inferences, int) else \
        Decimal(repr(float(inferences)))
    quantum = _PER_1K if per == 1000 else _PER_INFERENCE
    return (Decimal(cost_nusd) * per / NANO / served).quantize(quantum, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class Prices:
    """The catalog's prices in nano-dollars: per GPU-hour by type, and per kWh."""

    gpu_hour_nusd: Mapping[str, Decimal]
    kwh_nusd: Decimal

    @classmethod
    def of(cls, catalog: Catalog) -> Prices:
        return cls(gpu_hour_nusd=MappingProxyType(
            {name: t.price_per_gpu_hour * NANO for name, t in catalog.types.items()}),
            kwh_nusd=catalog.electricity_per_kwh * NANO)

    def gpu_nusd(self, gpu_type: str, seconds: float) -> int:
        """One whole GPU of ``gpu_type`` for ``seconds`` (to the microsecond)."""
        return _gpu_nusd(self.gpu_hour_nusd.get(gpu_type, _ZERO), round(seconds * 1_000_000))

    @staticmethod
    def kwh(joules: float) -> Decimal:
        """Joules as kWh (to the millijoule)."""
        return Decimal(f"{max(joules, 0.0):.3f}") / JOULES_PER_KWH

    def energy_nusd(self, joules: float) -> int:
        """The energy ``joules`` (to the millijoule) at the price per kWh, rounded half to
        even: ``kwh(joules) × kwh_nusd`` in Decimal, computed exactly in integers where
        that is provably the same number (``_exact_energy_nusd``)."""
        return self.energy(joules)[1]

    def energy(self, joules: float) -> tuple[float, int]:
        """``(float(kwh(joules)), energy_nusd(joules))``, the millijoules read once.

        Without Decimal where that gives the same numbers: below 1e25 mJ (2.8e15 kWh,
        under 2**53), mJ ÷ 3.6e9 as a float (correctly rounded) equals the float of
        Decimal's 28-digit quotient: a quotient that is not a midpoint between two floats
        lies further from one (by 3e-26 of its value: 1 / (3.6e9 × 2**53)) than Decimal's
        rounding moves it (5e-28 of it), and one that is has at most 26 digits, which
        Decimal keeps exactly."""
        text = f"{max(joules, 0.0):.3f}"
        if text[-4:-3] == "." and text[0] != "-":  # finite, not -0: the mJ are the digits
            millijoules = int(text[:-4] + text[-3:])
            if millijoules < _FLOAT_KWH_BOUND:
                exact = _exact_energy_nusd(millijoules, self.kwh_nusd)
                if exact is not None:
                    return millijoules / _MJ_PER_KWH, exact
        kwh = Decimal(text) / JOULES_PER_KWH
        return float(kwh), _round(kwh * self.kwh_nusd)


_ZERO = Decimal(0)
# Below this, (|result| + 1) × denominator keeps Decimal's two 28-digit roundings (each
# off by at most 1e-27 of the value) closer to the exact quotient than 1/(2 × denominator),
# the least distance between a quotient that is not a tie and a half-integer: both round
# to the same integer.
_EXACT_BOUND = 10**25
_FLOAT_KWH_BOUND = 10**25
_MJ_PER_KWH = 1000 * int(JOULES_PER_KWH)


@lru_cache(maxsize=256)
def _gpu_nusd(price_per_h: Decimal, micros: int) -> int:
    # Cached: a sample prices every GPU of a type for the same period.
    return _round(price_per_h * micros / (HOUR_S * 1_000_000))


@lru_cache(maxsize=64)
def _per_mj(kwh_nusd: Decimal) -> tuple[int, int] | None:
    """The price of one millijoule as an exact fraction; None when not finite."""
    if not kwh_nusd.is_finite():
        return None
    numerator, denominator = kwh_nusd.as_integer_ratio()
    return numerator, denominator * _MJ_PER_KWH


def _exact_energy_nusd(millijoules: int, kwh_nusd: Decimal) -> int | None:
    """round_half_even(millijoules × the price per mJ) in integers, or None where it might
    differ from the Decimal computation (an exact tie, or numbers too large)."""
    ratio = _per_mj(kwh_nusd)
    if ratio is None:
        return None
    numerator, denominator = ratio
    whole, rest = divmod(millijoules * numerator, denominator)
    twice = 2 * rest
    if twice == denominator or (abs(whole) + 1) * denominator >= _EXACT_BOUND:
        return None
    return whole + 1 if twice > denominator else whole


@dataclass(frozen=True, slots=True)
class GpuCost:
    """What one GPU costs over a period, split over its slices and its idle share.

    ``held_*`` run parallel to the ``shares`` given to ``gpu_cost``. Every part
    is integer nano-dollars; ``total_nusd`` is the GPU's whole cost.
    """

    shares: tuple[int, ...]
    whole_pct: int  # 100, or the sum of the shares when they exceed it
    held_gpu_nusd: tuple[int, ...]
    held_energy_nusd: tuple[int, ...]
    idle_gpu_nusd: int = 0
    idle_energy_nusd: int = 0

    @property
    def idle_pct(self) -> int:
        return self.whole_pct - sum(self.shares)

    @property
    def in_use(self) -> bool:
        return bool(self.shares)

    def held_nusd(self, i: int) -> int:
        """Slice ``i``'s part: its share of the price and of the energy."""
        return self.held_gpu_nusd[i] + self.held_energy_nusd[i]

    @property
    def idle_nusd(self) -> int:
        return self.idle_gpu_nusd + self.idle_energy_nusd

    @property
    def gpu_nusd(self) -> int:
        return sum(self.held_gpu_nusd) + self.idle_gpu_nusd

    @property
    def energy_nusd(self) -> int:
        return sum(self.held_energy_nusd) + self.idle_energy_nusd

    @property
    def total_nusd(self) -> int:
        return self.gpu_nusd + self.energy_nusd


_UNUSED = GpuCost(shares=(), whole_pct=100, held_gpu_nusd=(), held_energy_nusd=())


def gpu_cost(*, shares: Sequence[int], price_nusd: int, energy_nusd: int) -> GpuCost:
    """THE rule for one GPU: ``price_nusd`` (the whole GPU for the period) and
    ``energy_nusd`` (what it drew) split by the thread ``shares`` its slices hold,
    the unallocated share as the idle part. No shares: it costs nothing."""
    held = tuple(int(s) for s in shares)
    if not held:
        return _UNUSED
    gpu_parts, energy_parts, whole = gpu_split(held, int(price_nusd), int(energy_nusd))
    return GpuCost(shares=held, whole_pct=whole, held_gpu_nusd=tuple(gpu_parts[:-1]),
                   held_energy_nusd=tuple(energy_parts[:-1]), idle_gpu_nusd=gpu_parts[-1],
                   idle_energy_nusd=energy_parts[-1])


def hourly_gpu_cost(*, gpu_type: str, power_w: float | None, shares: Sequence[int],
                    prices: Prices) -> GpuCost:
    """``gpu_cost`` per hour at an instant: one hour of the GPU at ``power_w``
    (``None``: no reading, no energy)."""
    if not shares:
        return gpu_cost(shares=(), price_nusd=0, energy_nusd=0)
    return gpu_cost(shares=shares, price_nusd=prices.gpu_nusd(gpu_type, HOUR_S),
                    energy_nusd=0 if power_w is None else prices.energy_nusd(power_w * HOUR_S))


@dataclass(frozen=True, slots=True)
class SliceCost:
    """One part of the per-hour attribution: a slice's share of its GPU, or the GPU's
    idle share (``is_idle``: ``owner == model == IDLE_MODEL``)."""

    node: str
    gpu_index: int
    gpu_type: str
    owner: str
    model: str
    share_pct: int  # threads held; for the idle part, those nobody holds
    gpu_nusd_per_h: int
    energy_nusd_per_h: int
    slice_index: int | None = None  # the slice's position on its GPU; None when idle

    @property
    def is_idle(self) -> bool:
        return self.slice_index is None

    @property
    def nusd_per_h(self) -> int:
        return self.gpu_nusd_per_h + self.energy_nusd_per_h

    @property
    def cost_per_hour(self) -> Decimal:
        return usd(self.nusd_per_h)

    @property
    def energy_cost_per_hour(self) -> Decimal:
        return usd(self.energy_nusd_per_h)


# The last telemetry's GPU readings by (node, index): a 5,000-GPU sample priced node by
# node (the MPS planner's impacts) or twice (the monitor) indexes its GPUs once.
_last_readings: tuple[FleetTelemetry, Mapping[tuple[str, int], GpuTelemetry]] | None = None


def _readings(telemetry: FleetTelemetry) -> Mapping[tuple[str, int], GpuTelemetry]:
    global _last_readings
    last = _last_readings
    if last is not None and last[0] is telemetry:
        return last[1]
    index = {(g.node, g.gpu_index): g for g in telemetry.gpus}
    _last_readings = (telemetry, index)
    return index


def slice_costs(telemetry: FleetTelemetry, layout: Sequence[Node], catalog: Catalog | Prices
                ) -> list[SliceCost]:
    """Per hour at ``telemetry``'s instant, every slice's part of its GPU and every GPU's
    idle part, in layout order (a GPU's slices, then its idle part when it has one)."""
    prices = catalog if isinstance(catalog, Prices) else Prices.of(catalog)
    readings = _readings(telemetry)
    out: list[SliceCost] = []
    for node in layout:
        for gpu in node.gpus:
            if not gpu.slices:
                continue  # released to the pool: costs nothing
            reading = readings.get((node.name, gpu.index))
            split = hourly_gpu_cost(gpu_type=gpu.gpu_type,
                                    power_w=None if reading is None else reading.power_w,
                                    shares=[sl.thread_pct for sl in gpu.slices], prices=prices)
            for i, sl in enumerate(gpu.slices):
                out.append(SliceCost(
                    node=node.name, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                    owner=sl.owner, model=sl.model or sl.owner, share_pct=sl.thread_pct,
                    gpu_nusd_per_h=split.held_gpu_nusd[i],
                    energy_nusd_per_h=split.held_energy_nusd[i], slice_index=i))
            if split.idle_pct:
                out.append(SliceCost(
                    node=node.name, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                    owner=IDLE_MODEL, model=IDLE_MODEL, share_pct=split.idle_pct,
                    gpu_nusd_per_h=split.idle_gpu_nusd,
                    energy_nusd_per_h=split.idle_energy_nusd))
    return out


@dataclass(frozen=True, slots=True)
class FleetCost:
    """The fleet's cost rate at one instant (SPEC §3.8). Money in US dollars per hour.

    ``total_per_hour = gpu_cost_per_hour + energy_cost_per_hour``; the idle cost
    (the unallocated share of GPUs in use, price and energy) is a part of it.
    """

    gpus_in_use: int
    gpu_nusd_per_h: int  # every GPU in use, whole
    energy_nusd_per_h: int  # the power of the GPUs in use
    idle_nusd_per_h: int  # the unallocated share of both
    inferences_per_s: float

    @property
    def gpu_cost_per_hour(self) -> Decimal:
        return usd(self.gpu_nusd_per_h)

    @property
    def energy_cost_per_hour(self) -> Decimal:
        return usd(self.energy_nusd_per_h)

    @property
    def idle_cost_per_hour(self) -> Decimal:
        return usd(self.idle_nusd_per_h)

    @property
    def total_nusd_per_h(self) -> int:
        return self.gpu_nusd_per_h + self.energy_nusd_per_h

    @property
    def total_per_hour(self) -> Decimal:
        return usd(self.total_nusd_per_h)

    @property
    def held_cost_per_hour(self) -> Decimal:
        return usd(self.total_nusd_per_h - self.idle_nusd_per_h)

    @property
    def cost_per_inference(self) -> Decimal | None:
        """US dollars per inference, idle included; ``None`` when nothing is served."""
        return per_inference(self.total_nusd_per_h, self.inferences_per_s * HOUR_S)

    @property
    def cost_per_1k(self) -> Decimal | None:
        """US dollars per 1,000 inferences, idle included; ``None`` when nothing is served."""
        return per_inference(self.total_nusd_per_h, self.inferences_per_s * HOUR_S, per=1000)


def sum_slice_costs(parts: Sequence[SliceCost], *, inferences_per_s: float) -> FleetCost:
    """The fleet's cost from its attribution: the parts add up to the whole."""
    return FleetCost(
        gpus_in_use=len({(p.node, p.gpu_index) for p in parts}),
        gpu_nusd_per_h=sum(p.gpu_nusd_per_h for p in parts),
        energy_nusd_per_h=sum(p.energy_nusd_per_h for p in parts),
        idle_nusd_per_h=sum(p.nusd_per_h for p in parts if p.is_idle),
        inferences_per_s=inferences_per_s)


def fleet_cost(telemetry: FleetTelemetry, layout: Sequence[Node], catalog: Catalog | Prices
               ) -> FleetCost:
    """The fleet's cost per hour and per inference at ``telemetry``'s instant, under
    ``layout`` (the cluster's nodes with their MPS slices). Inferences are the
    deployments' served rate over 1 m (``telemetry.totals.qps``).

    The same figures as ``sum_slice_costs(slice_costs(...))``, without building the
    parts: per GPU in use its price and energy whole (the split conserves them) and the
    idle part of each."""
    prices = catalog if isinstance(catalog, Prices) else Prices.of(catalog)
    readings = _readings(telemetry)
    in_use: set[tuple[str, int]] = set()
    gpu_total = energy_total = idle_total = 0
    for node in layout:
        name = node.name
        for gpu in node.gpus:
            if not gpu.slices:
                continue  # released to the pool: costs nothing
            key = (name, gpu.index)
            in_use.add(key)
            reading = readings.get(key)
            price = prices.gpu_nusd(gpu.gpu_type, HOUR_S)
            energy = 0 if reading is None or reading.power_w is None else \
                prices.energy_nusd(reading.power_w * HOUR_S)
            gpu_total += price
            energy_total += energy
            weights, _ = _weights(tuple(int(sl.thread_pct) for sl in gpu.slices))
            if weights[-1]:  # an idle share: its part of the price and of the energy
                idle_total += _split(price, weights)[-1] + _split_once(energy, weights)[-1]
    return FleetCost(gpus_in_use=len(in_use), gpu_nusd_per_h=gpu_total,
                     energy_nusd_per_h=energy_total, idle_nusd_per_h=idle_total,
                     inferences_per_s=telemetry.totals.qps)
