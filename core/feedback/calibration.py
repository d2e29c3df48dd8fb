"""Step 2 of the feedback loop: calibrate the performance model per (GPU type, workload class)
from the observations' actual/predicted ratios.

Why: the replay that scores candidate weights is only as good as the model it
runs on; calibration makes the twin serve what the fleet served.

Invariants: pure and deterministic (entries in GPU-type, then class order);
each ratio is clipped into ``ratio_clip`` before the median, so one stray
reading cannot move a key far; a key with fewer than ``min_key_observations``
ratios leaves the model unchanged (``time_scale`` 1.0); a latency ratio counts
only when the whole deployment sits on that one key.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.feedback.observations import Observation
from core.feedback.policy import FeedbackPolicy
from core.feedback.wire import Fields, num
from core.model import WorkloadClass
from core.sim.perf_model import PerfModel


@dataclass(frozen=True, slots=True)
class CalibrationEntry:
    """Actual/predicted ratios for one (GPU type, workload class)."""

    gpu_type: str
    workload_class: WorkloadClass
    throughput_ratio: float | None  # median actual/predicted capacity (clipped)
    throughput_n: int
    latency_ratio: float | None  # median actual/predicted latency (clipped)
    latency_n: int


@dataclass(frozen=True, slots=True)
class CalibrationRow:
    """One calibration entry as stored in the evidence."""

    gpu_type: str
    workload_class: WorkloadClass
    throughput_ratio: float | None
    throughput_n: int
    latency_ratio: float | None
    latency_n: int
    time_scale: float  # the multiplier applied to the model's service times

    def to_json(self) -> dict[str, Any]:
        return {"gpu_type": self.gpu_type, "workload_class": self.workload_class.value,
                "throughput_ratio": self.throughput_ratio, "throughput_n": self.throughput_n,
                "latency_ratio": self.latency_ratio, "latency_n": self.latency_n,
                "time_scale": self.time_scale}

    @classmethod
    def read(cls, f: Fields) -> CalibrationRow:
        return cls(gpu_type=f.text("gpu_type"),
                   workload_class=f.choice("workload_class", WorkloadClass),
                   throughput_ratio=f.opt_real("throughput_ratio", low=0.0),
                   throughput_n=f.count("throughput_n"),
                   latency_ratio=f.opt_real("latency_ratio", low=0.0),
                   latency_n=f.count("latency_n"), time_scale=f.real("time_scale", low=0.0))


@dataclass(frozen=True, slots=True)
class Calibration:
    """The calibration of one run: an entry per (GPU type, workload class) observed."""

    entries: tuple[CalibrationEntry, ...] = ()
    min_key_observations: int = 2

    def entry(self, gpu_type: str, workload_class: WorkloadClass) -> CalibrationEntry | None:
        return next((e for e in self.entries
                     if e.gpu_type == gpu_type and e.workload_class == workload_class), None)

    def time_scale(self, gpu_type: str, workload_class: WorkloadClass) -> float:
        """Multiplier on the model's service times for this key (1.0 when unknown).

        Capacity is what cost depends on, so its ratio wins (times scale by its
        inverse); the latency ratio stands in when utilization was too low to
        measure capacity.
        """
        e = self.entry(gpu_type, workload_class)
        if e is None:
            return 1.0
        if e.throughput_ratio is not None and e.throughput_n >= self.min_key_observations:
            return 1.0 / e.throughput_ratio
        if e.latency_ratio is not None and e.latency_n >= self.min_key_observations:
            return e.latency_ratio
        return 1.0

    def rows(self) -> tuple[CalibrationRow, ...]:
        """The entries as the evidence shows them (ratios rounded, with the scale used)."""
        return tuple(CalibrationRow(
            gpu_type=e.gpu_type, workload_class=e.workload_class,
            throughput_ratio=num(e.throughput_ratio, 4), throughput_n=e.throughput_n,
            latency_ratio=num(e.latency_ratio, 4), latency_n=e.latency_n,
            time_scale=round(self.time_scale(e.gpu_type, e.workload_class), 4))
            for e in self.entries)

    def as_rows(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.rows()]


def calibrate(observations: Iterable[Observation],
              policy: FeedbackPolicy | None = None) -> Calibration:
    """Median clipped actual/predicted ratios per (GPU type, workload class), with counts.

    Latency ratios count only where every replica of the deployment sits on
    the same (GPU type, class), so a mixed deployment does not smear one key
    into another.
    """
    policy = policy or FeedbackPolicy()
    lo, hi = policy.ratio_clip
    tput: dict[tuple[str, WorkloadClass], list[float]] = defaultdict(list)
    lat: dict[tuple[str, WorkloadClass], list[float]] = defaultdict(list)
    keys: set[tuple[str, WorkloadClass]] = set()
    for o in observations:
        key = (o.gpu_type, o.workload_class)
        keys.add(key)
        r = o.throughput_ratio
        if r is not None and math.isfinite(r) and r > 0:
            tput[key].append(min(max(r, lo), hi))
        r = o.latency_ratio
        if o.latency_pure and r is not None and math.isfinite(r) and r > 0:
            lat[key].append(min(max(r, lo), hi))
    order = {wc: i for i, wc in enumerate(WorkloadClass)}
    entries = tuple(
        CalibrationEntry(t, wc, statistics.median(tput[(t, wc)]) if tput[(t, wc)] else None,
                         len(tput[(t, wc)]),
                         statistics.median(lat[(t, wc)]) if lat[(t, wc)] else None,
                         len(lat[(t, wc)]))
        for t, wc in sorted(keys, key=lambda k: (k[0], order[k[1]])))
    return Calibration(entries, min_key_observations=policy.min_key_observations)


def calibrated_perf_model(perf: PerfModel, calibration: Calibration) -> PerfModel:
    """``perf`` with each (class, GPU type)'s times scaled by the calibration's ``time_scale``."""
    params = {}
    for (wc, gpu_type), p in perf.params.items():
        scale = calibration.time_scale(gpu_type, wc)
        params[(wc, gpu_type)] = p if scale == 1.0 else p.scaled(
            decode_speedup=1.0 / scale, prefill_speedup=1.0 / scale)
    return PerfModel(params=params, co_runner_slowdown=perf.co_runner_slowdown)
