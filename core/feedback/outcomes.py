"""Fleet-level outcomes of the observed replicas: served QPS, $/1k inferences, power cost and
utilization efficiency, in total and per GPU type (SPEC §3.7's "observed outcomes").

Why: an approver reads what the fleet actually delivers beside what the replay
promises; the same summary goes into a proposal's evidence.

Invariants: pure; money is ``Decimal`` rounded the way the JSON stores it, so
``OutcomeSummary.from_json(s.to_json()) == s``; a rate over no traffic or no
capacity is ``None``, never a division by zero; GPU types in name order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from core.feedback.observations import Observation
from core.feedback.wire import Fields, dec, money_json, money_value, num


@dataclass(frozen=True, slots=True)
class GpuTypeOutcome:
    gpu_type: str
    replicas: int
    served_qps: float | None
    cost_per_1k: Decimal | None
    power_cost_per_hour: Decimal | None

    def to_json(self) -> dict[str, Any]:
        return {"gpu_type": self.gpu_type, "replicas": self.replicas,
                "served_qps": self.served_qps, "cost_per_1k": money_json(self.cost_per_1k),
                "power_cost_per_hour": money_json(self.power_cost_per_hour)}

    @classmethod
    def read(cls, f: Fields) -> GpuTypeOutcome:
        return cls(gpu_type=f.text("gpu_type"), replicas=f.count("replicas"),
                   served_qps=f.opt_real("served_qps", low=0.0),
                   cost_per_1k=f.opt_money("cost_per_1k"),
                   power_cost_per_hour=f.opt_money("power_cost_per_hour"))


@dataclass(frozen=True, slots=True)
class OutcomeSummary:
    replicas: int
    served_qps: float | None
    cost_per_hour: Decimal | None
    power_cost_per_hour: Decimal | None
    cost_per_1k: Decimal | None
    utilization_efficiency: float | None
    by_gpu_type: tuple[GpuTypeOutcome, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas, "served_qps": self.served_qps,
            "cost_per_hour": money_json(self.cost_per_hour),
            "power_cost_per_hour": money_json(self.power_cost_per_hour),
            "cost_per_1k": money_json(self.cost_per_1k),
            "utilization_efficiency": self.utilization_efficiency,
            "by_gpu_type": [t.to_json() for t in self.by_gpu_type],
        }

    @classmethod
    def from_json(cls, data: object, *, path: str = "outcomes") -> OutcomeSummary:
        return cls.read(Fields(data, path))

    @classmethod
    def read(cls, f: Fields) -> OutcomeSummary:
        return cls(replicas=f.count("replicas"), served_qps=f.opt_real("served_qps", low=0.0),
                   cost_per_hour=f.opt_money("cost_per_hour"),
                   power_cost_per_hour=f.opt_money("power_cost_per_hour"),
                   cost_per_1k=f.opt_money("cost_per_1k"),
                   utilization_efficiency=f.opt_real("utilization_efficiency", low=0.0),
                   by_gpu_type=tuple(GpuTypeOutcome.read(t) for t in f.objects("by_gpu_type")))


def summarize_outcomes(observations: Sequence[Observation]) -> OutcomeSummary:
    """The observed replicas' outcomes, in total and per GPU type."""
    qps = sum(o.served_qps for o in observations)
    cost = sum((o.cost_per_hour for o in observations), Decimal(0))
    power = sum((o.power_cost_per_hour for o in observations), Decimal(0))
    capacity = sum((o.actual_capacity_rps or o.predicted_capacity_rps) for o in observations)
    by_type: dict[str, list[Observation]] = defaultdict(list)
    for o in observations:
        by_type[o.gpu_type].append(o)
    return OutcomeSummary(
        replicas=len(observations), served_qps=num(qps), cost_per_hour=money_value(cost, 6),
        power_cost_per_hour=money_value(power, 6), cost_per_1k=_per_1k(cost, qps),
        utilization_efficiency=num(qps / capacity) if capacity > 0 else None,
        by_gpu_type=tuple(
            GpuTypeOutcome(
                gpu_type=t, replicas=len(os_), served_qps=num(sum(o.served_qps for o in os_)),
                cost_per_1k=_per_1k(sum((o.cost_per_hour for o in os_), Decimal(0)),
                                    sum(o.served_qps for o in os_)),
                power_cost_per_hour=money_value(
                    sum((o.power_cost_per_hour for o in os_), Decimal(0)), 6))
            for t, os_ in sorted(by_type.items())))


def outcome_summary(observations: Sequence[Observation]) -> dict[str, Any]:
    """``summarize_outcomes`` as JSON (what the evidence stores)."""
    return summarize_outcomes(observations).to_json()


def _per_1k(cost: Decimal, qps: float) -> Decimal | None:
    # (cost $/h) / (qps × 3600 / 1000)
    return None if qps <= 0 else money_value(cost / dec(qps * 3.6), 6)
