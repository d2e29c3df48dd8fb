"""Autoscaling recommendations per model deployment (SPEC §3.6), with stabilization.

Pure and clock-free: the caller passes ``now``. A raw recommendation (up or
down) must hold continuously for its whole stabilization window (60 s up,
300 s down by default) before it is acted on; any sample that does not
support it restarts the window. Targets stay within [min, max] replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from core.errors import ValidationError


class Action(StrEnum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    up_step: int = 4
    down_step: int = 2
    up_queue_above: float = 5
    # SPEC: "efficiency > 10 TOPS/W". With the catalog's figures no GPU reaches
    # 10 TOPS/W at TDP (H100 1.4, A100 1.6), so with this default the up rule
    # never fires; operators set it to what their efficiency measure can reach.
    up_min_tops_per_w: float = 10.0
    up_max_cost_per_inference: float = 0.05
    down_queue_below: float = 2
    down_min_cost_per_inference: float = 0.01
    down_max_utilization: float = 0.70
    up_stabilization_s: float = 60.0
    down_stabilization_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 16

    def __post_init__(self) -> None:
        if self.up_step < 1 or self.down_step < 1:
            raise ValidationError("autoscaling.step", "steps must be ≥ 1")
        if not (0 <= self.min_replicas <= self.max_replicas):
            raise ValidationError("autoscaling.max_replicas", "must be ≥ min_replicas ≥ 0")
        if self.up_stabilization_s < 0 or self.down_stabilization_s < 0:
            raise ValidationError("autoscaling.stabilization", "windows must be ≥ 0 s")


@dataclass(frozen=True, slots=True)
class Signals:
    """What the autoscaler reads about one deployment at one instant."""

    deployment: str
    replicas: int
    queue_waiting: float
    tops_per_w: float
    cost_per_inference: float | None
    utilization: float


@dataclass(frozen=True, slots=True)
class Recommendation:
    deployment: str
    action: Action
    replicas: int
    target: int
    reason: str
    # The raw recommendation waiting out its window, and when it started holding.
    pending: Action = Action.HOLD
    pending_since: float | None = None
    fires_in_s: float | None = None
    inputs: dict[str, float | None] = field(default_factory=dict)


def raw_recommendation(s: Signals, p: AutoscalePolicy) -> tuple[Action, str]:
    """Which way the rules point right now, and why (no stabilization)."""
    cost = s.cost_per_inference
    if (s.queue_waiting > p.up_queue_above and s.tops_per_w > p.up_min_tops_per_w
            and (cost is None or cost < p.up_max_cost_per_inference)):
        return Action.UP, (f"queue {s.queue_waiting:g} > {p.up_queue_above:g} and efficiency "
                           f"{s.tops_per_w:.2f} > {p.up_min_tops_per_w:g} TOPS/W")
    if (s.queue_waiting < p.down_queue_below and cost is not None
            and cost > p.down_min_cost_per_inference and s.utilization < p.down_max_utilization):
        return Action.DOWN, (f"queue {s.queue_waiting:g} < {p.down_queue_below:g}, cost "
                             f"${cost:.4f} > ${p.down_min_cost_per_inference:g} per inference "
                             f"and utilization {s.utilization:.0%} < "
                             f"{p.down_max_utilization:.0%}")
    return Action.HOLD, "no rule applies"


class Autoscaler:
    """Stateful: remembers since when each deployment's raw recommendation has held."""

    def __init__(self, policy: AutoscalePolicy | None = None) -> None:
        self.policy = policy or AutoscalePolicy()
        self._pending: dict[str, tuple[Action, float]] = {}

    def observe(self, s: Signals, *, now: float) -> Recommendation:
        p = self.policy
        raw, why = raw_recommendation(s, p)
        inputs = {"queue_waiting": s.queue_waiting, "tops_per_w": s.tops_per_w,
                  "cost_per_inference": s.cost_per_inference, "utilization": s.utilization,
                  "replicas": float(s.replicas)}
        if raw is Action.HOLD:
            self._pending.pop(s.deployment, None)
            return Recommendation(s.deployment, Action.HOLD, s.replicas, s.replicas, why,
                                  inputs=inputs)
        target = (min(p.max_replicas, s.replicas + p.up_step) if raw is Action.UP
                  else max(p.min_replicas, s.replicas - p.down_step))
        if target == s.replicas:
            self._pending.pop(s.deployment, None)
            bound = "maximum" if raw is Action.UP else "minimum"
            return Recommendation(s.deployment, Action.HOLD, s.replicas, s.replicas,
                                  f"{why}, but already at the {bound} of {s.replicas} replicas",
                                  inputs=inputs)
        held = self._pending.get(s.deployment)
        since = held[1] if held is not None and held[0] is raw else now
        self._pending[s.deployment] = (raw, since)
        window = p.up_stabilization_s if raw is Action.UP else p.down_stabilization_s
        remaining = window - (now - since)
        if remaining > 0:
            return Recommendation(s.deployment, Action.HOLD, s.replicas, s.replicas,
                                  f"{why}; waiting {remaining:.0f} s more for the "
                                  f"{window:.0f} s stabilization window",
                                  pending=raw, pending_since=since, fires_in_s=remaining,
                                  inputs=inputs)
        self._pending.pop(s.deployment, None)  # the next action needs a full window again
        return Recommendation(s.deployment, raw, s.replicas, target,
                              f"{why} for {now - since:.0f} s", pending=raw,
                              pending_since=since, fires_in_s=0.0, inputs=inputs)
