"""The feedback loop's knobs (``[feedback]`` settings) and when a run is due.

Why: every step of the loop (observe, calibrate, candidates, search, propose,
auto-apply) reads the same policy; it lives apart so settings can build it
without importing the steps.

Invariants: a ``FeedbackPolicy`` that exists is valid (each bound checked in
``__post_init__``, errors naming ``feedback.<key>``); ``from_mapping`` refuses
unknown keys; ``due`` is a pure function of the last run, ``now`` and the
interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.errors import ValidationError
from core.model import COMPONENTS
from core.validate import integer, number


@dataclass(frozen=True)
class FeedbackPolicy:
    """Knobs of the feedback loop; defaults are SPEC §3.7's reference approach."""

    interval_s: float = 3600.0  # how often the controller runs a feedback step
    first_run_after_s: float = 300.0  # a new leader's first run: once it has telemetry
    replay_window_s: float = 86_400.0  # recent traffic replayed per candidate (24 h)
    max_step: float = 0.05  # largest change of any one component per proposal
    step_fractions: tuple[float, ...] = (1.0,)  # moves tried: these fractions of max_step
    combine_top: int = 2  # second round: joins of the best move with up to this many others
    min_improvement: float = 0.02  # relative drop of simulated cost per 1k needed (2 %)
    sla_tolerance: float = 0.0  # SLA attainment may fall by at most this (0: must not fall)
    min_observations: int = 3  # observations with a comparison needed before proposing
    min_key_observations: int = 2  # per (GPU type, class) before its ratio is used
    ratio_clip: tuple[float, float] = (0.25, 4.0)  # actual/predicted ratios clipped into this
    min_utilization: float = 0.02  # below it, utilization is noise: no throughput ratio
    reference_prompt_tokens: float = 176.0  # request size when telemetry has no counters
    reference_output_tokens: float = 15.0
    max_evidence_points: int = 200  # predicted-vs-actual points kept in the evidence
    auto_apply: bool = False
    auto_apply_max_step: float = 0.02  # auto-apply only moves this small …
    auto_apply_min_weight: float = 0.05  # … that leave every component at least this

    def __post_init__(self) -> None:
        _require("feedback.first_run_after_s", self.first_run_after_s, low=0.0)
        for name in ("interval_s", "replay_window_s", "reference_prompt_tokens",
                     "reference_output_tokens"):
            _require(f"feedback.{name}", getattr(self, name), low=0.0, low_open=True)
        for name in ("max_step", "auto_apply_max_step"):
            _require(f"feedback.{name}", getattr(self, name), low=0.0, low_open=True, high=0.5)
        for name in ("min_improvement", "sla_tolerance", "min_utilization",
                     "auto_apply_min_weight"):
            _require(f"feedback.{name}", getattr(self, name), low=0.0, high=1.0)
        if not self.step_fractions:
            raise ValidationError("feedback.step_fractions", "needs at least one fraction")
        for f in self.step_fractions:
            _require("feedback.step_fractions", f, low=0.0, low_open=True, high=1.0)
        for name in ("combine_top", "min_observations", "min_key_observations",
                     "max_evidence_points"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"feedback.{name}", "must be an integer ≥ 0")
        lo, hi = self.ratio_clip
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= 1 <= hi):
            raise ValidationError("feedback.ratio_clip",
                                  "must be (low, high) with 0 < low ≤ 1 ≤ high")
        if self.auto_apply_min_weight * len(COMPONENTS) > 1.0:
            raise ValidationError("feedback.auto_apply_min_weight",
                                  f"must be at most 1/{len(COMPONENTS)}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> FeedbackPolicy:
        """``[feedback]`` settings; unknown keys and bad values name the key."""
        fields = cls.__dataclass_fields__
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in fields:
                raise ValidationError(f"feedback.{key}", "is not a feedback setting")
            default = fields[key].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValidationError(f"feedback.{key}", "must be true or false")
                values[key] = value
            elif isinstance(default, tuple):
                if not isinstance(value, list | tuple) or not value:
                    raise ValidationError(f"feedback.{key}", "must be a list of numbers")
                values[key] = tuple(number(f"feedback.{key}", v) for v in value)
            elif isinstance(default, int):
                values[key] = integer(f"feedback.{key}", value)
            else:
                values[key] = number(f"feedback.{key}", value)
        return cls(**values)


def _require(name: str, value: float, *, low: float, low_open: bool = False,
             high: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '≥'} {low:g}" + ("" if high is None else f" and ≤ {high:g}")
        raise ValidationError(name, f"must be a number {bound}")


def due(*, last_run_at: datetime | None, now: datetime, policy: FeedbackPolicy) -> bool:
    """Whether a feedback step is due (``interval_s`` after the last one)."""
    return last_run_at is None or now - last_run_at >= timedelta(seconds=policy.interval_s)
