"""A rollout plan: which nodes change from which device-plugin config to which, and how.

Why: the planner proposes, an approver approves and the controller executes the
same value, so it is one frozen dataclass with ``to_json`` / ``from_json``
(stored with the plan in ``db.rollouts``). ``validate_plan`` refuses a plan
before anyone is asked to approve it: one that would disrupt more than its
update type allows or leave too little free capacity (SPEC §4.2, §4.4).

Invariants of a plan that exists:
- node names are unique; every change names a real config (``exclusive`` /
  ``mps-<N>``) on both sides and really changes something (from ≠ to);
- canary nodes are a subset of the changed nodes; blue-green's ``blue_nodes``
  (where the shifted workloads run meanwhile) are disjoint from them;
- fractions are within [0, 1]; timeouts and windows are > 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from core.errors import ValidationError
from core.settings import device_plugin_replicas

# SPEC §4.4: an emergency change never disrupts more than this, whatever its update type.
EMERGENCY_MAX_DISRUPTION = 0.30
CANARY_FRACTION = 0.10
DEFAULT_SHIFT_STEPS: tuple[int, ...] = (10, 50, 100)


class Strategy(StrEnum):
    ROLLING = "rolling"
    CANARY = "canary"
    BLUE_GREEN = "blue_green"
    EMERGENCY = "emergency"


class UpdateLimits(Protocol):
    """What validation reads of an update type (``core.rollout.gates.UpdateType`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def max_disruption(self) -> float: ...

    @property
    def min_free_capacity(self) -> float: ...


@dataclass(frozen=True, slots=True)
class NodeChange:
    """One node's change: its device plugin goes from ``from_config`` to ``to_config``."""

    node: str
    from_config: str
    to_config: str
    gpus: int

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not self.node.strip():
            raise ValidationError("changes.node", "must name a node")
        device_plugin_replicas(self.from_config, where=f"changes.{self.node}.from_config")
        device_plugin_replicas(self.to_config, where=f"changes.{self.node}.to_config")
        if self.from_config == self.to_config:
            raise ValidationError(f"changes.{self.node}.to_config",
                                  f"is {self.to_config}, as today: nothing to change")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise ValidationError(f"changes.{self.node}.gpus", "must be a whole number ≥ 1")

    @property
    def expected_gpus(self) -> int:
        """``nvidia.com/gpu`` the node advertises once it runs ``to_config``."""
        return self.gpus * device_plugin_replicas(self.to_config)

    @property
    def restore_gpus(self) -> int:
        """``nvidia.com/gpu`` it advertises again once rolled back to ``from_config``."""
        return self.gpus * device_plugin_replicas(self.from_config)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "from_config": self.from_config,
                "to_config": self.to_config, "gpus": self.gpus}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeChange:
        return cls(node=str(data["node"]), from_config=str(data["from_config"]),
                   to_config=str(data["to_config"]), gpus=int(data["gpus"]))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long each waiting step may take before it fails (and the plan rolls back)."""

    drain_s: float = 600.0
    restart_s: float = 300.0
    pods_s: float = 900.0

    def __post_init__(self) -> None:
        for name in ("drain_s", "restart_s", "pods_s"):
            _positive(f"timeouts.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    strategy: Strategy
    update_type: str
    changes: tuple[NodeChange, ...]
    canary_nodes: tuple[str, ...] = ()
    blue_nodes: tuple[str, ...] = ()
    auto_promote: bool = False
    migrate: bool = True  # pre-warm: copies of a node's replicas run elsewhere before it drains
    predicted_disruption: float = 0.0  # fraction of services disrupted at once
    free_capacity: float = 1.0  # fraction of the fleet's capacity left free during the change
    analysis_window_s: float = 3600.0
    validation_window_s: float = 300.0
    shift_steps: tuple[int, ...] = DEFAULT_SHIFT_STEPS
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):
            raise ValidationError("strategy", f"must be one of {', '.join(Strategy)}")
        if not isinstance(self.update_type, str) or not self.update_type:
            raise ValidationError("update_type", "must name an update type")
        if not self.changes:
            raise ValidationError("changes", "a plan changes at least one node")
        names = [c.node for c in self.changes]
        if len(set(names)) != len(names):
            raise ValidationError("changes", "names a node twice")
        for node in self.canary_nodes:
            if node not in names:
                raise ValidationError("canary_nodes", f"{node!r} is not a node the plan changes")
        if self.strategy is not Strategy.CANARY and self.canary_nodes:
            raise ValidationError("canary_nodes", "only a canary plan has canary nodes")
        if set(self.blue_nodes) & set(names):
            raise ValidationError("blue_nodes", "must not be nodes the plan changes")
        for name in ("predicted_disruption", "free_capacity"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValidationError(name, "must be a fraction within [0, 1]")
        _positive("analysis_window_s", self.analysis_window_s)
        _positive("validation_window_s", self.validation_window_s)
        steps = self.shift_steps
        if not steps or list(steps) != sorted(set(steps)) or steps[-1] != 100 or steps[0] <= 0:
            raise ValidationError("shift_steps", "must rise strictly from above 0 to 100 (%)")

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(c.node for c in self.changes)

    def change(self, node: str) -> NodeChange:
        for c in self.changes:
            if c.node == node:
                return c
        raise KeyError(node)

    def with_canaries(self, gpu_nodes: int) -> RolloutPlan:
        """A canary plan with its canary nodes chosen when none are named: 10 % of the
        fleet's GPU nodes (at least one, at most all but one of the changed nodes)."""
        if self.strategy is not Strategy.CANARY or self.canary_nodes:
            return self
        count = canary_count(gpu_nodes)
        count = max(1, min(count, len(self.changes) - 1)) if len(self.changes) > 1 else 1
        return replace(self, canary_nodes=self.nodes[:count])

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.value, "update_type": self.update_type,
            "changes": [c.to_json() for c in self.changes],
            "canary_nodes": list(self.canary_nodes), "blue_nodes": list(self.blue_nodes),
            "auto_promote": self.auto_promote, "migrate": self.migrate,
            "predicted_disruption": self.predicted_disruption,
            "free_capacity": self.free_capacity,
            "analysis_window_s": self.analysis_window_s,
            "validation_window_s": self.validation_window_s,
            "shift_steps": list(self.shift_steps),
            "timeouts": {"drain_s": self.timeouts.drain_s,
                         "restart_s": self.timeouts.restart_s,
                         "pods_s": self.timeouts.pods_s},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutPlan:
        try:
            strategy = Strategy(data["strategy"])
        except ValueError as exc:
            raise ValidationError("strategy", f"must be one of {', '.join(Strategy)}") from exc
        t = data.get("timeouts") or {}
        return cls(
            strategy=strategy, update_type=str(data["update_type"]),
            changes=tuple(NodeChange.from_json(c) for c in data["changes"]),
            canary_nodes=tuple(data.get("canary_nodes", ())),
            blue_nodes=tuple(data.get("blue_nodes", ())),
            auto_promote=bool(data.get("auto_promote", False)),
            migrate=bool(data.get("migrate", True)),
            predicted_disruption=float(data.get("predicted_disruption", 0.0)),
            free_capacity=float(data.get("free_capacity", 1.0)),
            analysis_window_s=float(data.get("analysis_window_s", 3600.0)),
            validation_window_s=float(data.get("validation_window_s", 300.0)),
            shift_steps=tuple(int(s) for s in data.get("shift_steps", DEFAULT_SHIFT_STEPS)),
            timeouts=Timeouts(**{k: float(v) for k, v in t.items()}),
        )


def canary_count(gpu_nodes: int) -> int:
    """SPEC §4.1: 10 % of the GPU nodes, at least one."""
    return max(1, math.ceil(CANARY_FRACTION * gpu_nodes - 1e-9))


def validate_plan(plan: RolloutPlan, *, limits: UpdateLimits,
                  known_nodes: Sequence[str] | None = None) -> RolloutPlan:
    """``plan`` when it may be proposed for approval; else ``ValidationError`` naming why.

    Refused: a plan whose update type is not ``limits``; one that would disrupt more
    than the update type's ``max_disruption`` (an emergency also at most 30 %); one
    that would leave less free capacity than its ``min_free_capacity``; one naming a
    node the cluster does not have (when ``known_nodes`` is given).
    """
    if plan.update_type != limits.name:
        raise ValidationError("update_type", f"is {plan.update_type!r}, but the limits "
                                             f"given are those of {limits.name!r}")
    cap = limits.max_disruption
    if plan.strategy is Strategy.EMERGENCY:
        cap = min(cap, EMERGENCY_MAX_DISRUPTION)
    if plan.predicted_disruption > cap + 1e-12:
        raise ValidationError(
            "predicted_disruption",
            f"{plan.predicted_disruption:.0%} of services would be disrupted; "
            f"{plan.update_type} allows at most {cap:.0%}"
            + (" (emergency changes: at most 30 %)" if plan.strategy is Strategy.EMERGENCY
               else ""))
    if plan.free_capacity + 1e-12 < limits.min_free_capacity:
        raise ValidationError(
            "free_capacity",
            f"{plan.free_capacity:.0%} of capacity would be left free during the change; "
            f"{plan.update_type} needs at least {limits.min_free_capacity:.0%}")
    if known_nodes is not None:
        missing = sorted(set(plan.nodes) - set(known_nodes))
        if missing:
            raise ValidationError("changes", f"unknown node(s): {', '.join(missing)}")
        absent_blue = sorted(set(plan.blue_nodes) - set(known_nodes))
        if absent_blue:
            raise ValidationError("blue_nodes", f"unknown node(s): {', '.join(absent_blue)}")
    return plan


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ValidationError(name, "must be a number > 0")
