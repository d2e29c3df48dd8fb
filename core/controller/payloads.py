"""Typed payloads the controller publishes in the store for consoles in other processes.

A payload crosses a process (and maybe a version) boundary, so ``from_json``
checks every field's type and raises ``ValidationError`` naming the field;
a reader shows a payload it cannot read as unknown, never as a default. Values
that JSON cannot hold (an infinite cost per inference: nothing served) are
written as null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ValidationError
from core.states import AutoscalingAction


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *,
           where: str, optional: bool = False) -> Any:
    if not isinstance(data, Mapping):
        raise ValidationError(where, "must be an object")
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ValidationError(f"{where}.{name}", "must be a number")
    if not isinstance(value, kind):
        raise ValidationError(f"{where}.{name}", f"is missing or not {_kind(kind)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{where}.{name}", "must be finite")
    return value


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "a number", float: "a number", str: "text", bool: "true/false",
                        list: "a list", dict: "an object"}.get(k, k.__name__) for k in kinds)


NUM = (int, float)


@dataclass(frozen=True, slots=True)
class DeploymentScaling:
    """One deployment's autoscaling state at a sample."""

    deployment: str
    replicas: int
    running: int
    in_flight: int
    queue: float
    tops_per_w: float
    cost_per_inference: float | None  # None: nothing served (unknown, not free)
    utilization: float
    action: AutoscalingAction
    target: int
    reason: str
    pending: AutoscalingAction
    pending_since: float | None
    fires_in_s: float | None
    window_s: float | None
    min_replicas: int
    max_replicas: int

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment, "replicas": self.replicas, "running": self.running,
            "in_flight": self.in_flight, "queue": self.queue,
            "tops_per_w": round(self.tops_per_w, 4),
            "cost_per_inference": finite(self.cost_per_inference),
            "utilization": round(self.utilization, 4), "action": self.action.value,
            "target": self.target, "reason": self.reason, "pending": self.pending.value,
            "pending_since": self.pending_since, "fires_in_s": self.fires_in_s,
            "window_s": self.window_s, "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "deployment"
                  ) -> DeploymentScaling:
        def f(name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
            return _field(data, name, kind, where=where, optional=optional)

        def action(name: str) -> AutoscalingAction:
            try:
                return AutoscalingAction(f(name, str))
            except ValueError:
                raise ValidationError(f"{where}.{name}", "is not an autoscaling action") \
                    from None

        return cls(
            deployment=f("deployment", str), replicas=int(f("replicas", int)),
            running=int(f("running", int)), in_flight=int(f("in_flight", int)),
            queue=float(f("queue", NUM)), tops_per_w=float(f("tops_per_w", NUM)),
            cost_per_inference=finite(f("cost_per_inference", NUM, True)),
            utilization=float(f("utilization", NUM)), action=action("action"),
            target=int(f("target", int)), reason=f("reason", str), pending=action("pending"),
            pending_since=f("pending_since", NUM, True), fires_in_s=f("fires_in_s", NUM, True),
            window_s=f("window_s", NUM, True), min_replicas=int(f("min_replicas", int)),
            max_replicas=int(f("max_replicas", int)))


@dataclass(frozen=True, slots=True)
class AutoscalingStatus:
    """The leader's latest recommendations (flag ``autoscaling.status``)."""

    at: float
    paused: bool
    deployments: tuple[DeploymentScaling, ...]

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "paused": self.paused,
                "deployments": [d.to_json() for d in self.deployments]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AutoscalingStatus:
        where = "autoscaling.status"
        rows = _field(data, "deployments", list, where=where)
        return cls(at=float(_field(data, "at", NUM, where=where)),
                   paused=_field(data, "paused", bool, where=where),
                   deployments=tuple(DeploymentScaling.from_json(d, where=f"{where}[{i}]")
                                     for i, d in enumerate(rows)))


@dataclass(frozen=True, slots=True)
class AutoscalingPause:
    """The operator's switch (flag ``autoscaling.paused``)."""

    paused: bool
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"paused": self.paused, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AutoscalingPause:
        where = "autoscaling.paused"
        return cls(paused=_field(data, "paused", bool, where=where),
                   reason=_field(data, "reason", str, where=where, optional=True) or "")
