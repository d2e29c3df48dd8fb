"""The twin's simulation knobs (``TwinConfig``), shared by its parts.

Why a module of its own: the traffic engine, the pod book and the ``Twin``
facade all read these knobs, and none of them should import another just for
them. Invariant: a ``TwinConfig`` that exists is valid (every check is in
``__post_init__``, naming the ``sim.*`` field it refuses).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import ValidationError

ROUTINGS = ("least_work", "uniform")


@dataclass(frozen=True)
class TwinConfig:
    """Knobs of the twin; all times in simulated seconds."""

    tick_s: float = 1.0
    startup_delay_s: float = 60.0  # bind → Running (image pull, weight load)
    request_timeout_s: float = 120.0  # clients give up; counted as failures
    endpoint_grace_s: float = 10.0  # a failed replica still gets traffic until probes notice
    namespace: str = "default"  # namespace of the pods already running at start
    max_chunk_s: float = 300.0
    util_smoothing_s: float = 5.0  # EWMA time constant of reported utilization and power
    load_window_s: float = 10.0  # the load that latency responds to is averaged this long
    histogram_slot_s: float = 10.0  # resolution of the 5-minute latency windows
    warmup_s: float = 0.0  # simulate this long before the clock's "now" at start
    seed: int = 0
    # Relative traffic per model name. Models not named get a share proportional to their
    # capacity at start (operators size deployments to their traffic); a model that first
    # appears later (bind) gets the median share.
    traffic_weights: Mapping[str, float] | None = None
    # The request the capacity-proportional traffic shares are computed for.
    reference_prompt_tokens: int = 176
    reference_output_tokens: int = 15
    # How a deployment's requests are spread over its replicas: "least_work" (the
    # replica with the least outstanding work, as the llm-d and AIBrix gateways route)
    # or "uniform" (at random, as a Kubernetes Service does).
    routing: str = "least_work"
    # Per model name, the latency objectives a request must meet (TTFT, TPOT, e2e
    # seconds; None: not stated): the twin counts the requests that met all of them.
    slo_targets: Mapping[str, tuple[float | None, float | None, float | None]] | None = None

    def __post_init__(self) -> None:
        positive = ("tick_s", "request_timeout_s", "max_chunk_s", "histogram_slot_s")
        for name in positive:
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValidationError(f"sim.{name}", "must be a number > 0")
        for name in ("startup_delay_s", "endpoint_grace_s", "util_smoothing_s", "warmup_s",
                     "load_window_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValidationError(f"sim.{name}", "must be a number ≥ 0")
        if self.max_chunk_s > 600 or self.max_chunk_s < self.tick_s:
            raise ValidationError("sim.max_chunk_s", "must be within [tick_s, 600]")
        if self.histogram_slot_s < self.tick_s:
            raise ValidationError("sim.histogram_slot_s", "must be ≥ tick_s")
        if self.seed < 0:
            raise ValidationError("sim.seed", "must be ≥ 0")
        if self.routing not in ROUTINGS:
            raise ValidationError("sim.routing", f"must be one of {', '.join(ROUTINGS)}")
        for model, weight in (self.traffic_weights or {}).items():
            if not math.isfinite(weight) or weight < 0:
                raise ValidationError(f"sim.traffic_weights.{model}", "must be a number ≥ 0")
