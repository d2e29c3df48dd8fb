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


def _numbers(raw: Mapping[str, Any] | None, *, where: str) -> dict[str, float] | None:
    if raw is None:
        return None
    out = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, NUM) or not math.isfinite(v):
            raise ValidationError(f"{where}.{k}", "must be a finite number")
        out[str(k)] = float(v)
    return out


def _optional_numbers(raw: Mapping[str, Any] | None, *, where: str
                      ) -> dict[str, float | None] | None:
    if raw is None:
        return None
    return {str(k): None if v is None else next(iter(_numbers({k: v}, where=where).values()))
            for k, v in raw.items()}


def _texts(raw: Mapping[str, Any] | None, *, where: str) -> dict[str, str] | None:
    if raw is None:
        return None
    for k, v in raw.items():
        if not isinstance(v, str):
            raise ValidationError(f"{where}.{k}", "must be text")
    return {str(k): v for k, v in raw.items()}


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
    # Added with the ``slo`` policy; absent in older payloads (read as unknown).
    policy: str = "seed"
    objectives: str = ""  # e.g. "TTFT p99 ≤ 2000 ms, TPOT p99 ≤ 100 ms"
    need_rps: float | None = None  # the stabilized planned rate the replicas must sustain
    capacity_rps: float | None = None  # what the current replicas sustain within the SLO
    forecast: Mapping[str, Any] | None = None  # core.autoscale_forecast.Forecast.to_json()
    # Per GPU type: requests/s one more replica sustains within the SLO, and what limits it.
    capacity_per_type: Mapping[str, float] | None = None
    limited_by: Mapping[str, str] | None = None
    type_choice: str = ""  # why the GPU type of the next replica
    attainment: Mapping[str, float | None] | None = None  # per target, last minutes

    def to_json(self) -> dict[str, Any]:
        return {
            **self._base_json(),
            "policy": self.policy, "objectives": self.objectives,
            "need_rps": finite(self.need_rps), "capacity_rps": finite(self.capacity_rps),
            "forecast": None if self.forecast is None else dict(self.forecast),
            "capacity_per_type": None if self.capacity_per_type is None
            else {k: round(float(v), 4) for k, v in self.capacity_per_type.items()},
            "limited_by": None if self.limited_by is None else dict(self.limited_by),
            "type_choice": self.type_choice,
            "attainment": None if self.attainment is None else dict(self.attainment),
        }

    def _base_json(self) -> dict[str, Any]:
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
            max_replicas=int(f("max_replicas", int)),
            policy=f("policy", str, True) or "seed",
            objectives=f("objectives", str, True) or "",
            need_rps=f("need_rps", NUM, True), capacity_rps=f("capacity_rps", NUM, True),
            forecast=f("forecast", dict, True),
            capacity_per_type=_numbers(f("capacity_per_type", dict, True),
                                       where=f"{where}.capacity_per_type"),
            limited_by=_texts(f("limited_by", dict, True), where=f"{where}.limited_by"),
            type_choice=f("type_choice", str, True) or "",
            attainment=_optional_numbers(f("attainment", dict, True),
                                         where=f"{where}.attainment"))


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
