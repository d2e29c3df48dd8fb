"""The evidence stored with a proposed weight version: the comparison an approver reads.

Why: a proposal is judged on what the loop saw and tried: predicted against
actual per replica, the calibration it derived, the observed outcomes, and
every candidate the replay scored against the active weights. The evidence
crosses processes (the controller stores it, consoles read it, possibly of
another version), so it is a typed value with one JSON form: ``Evidence`` is
built by ``make_evidence``, stored as ``Evidence.to_json()`` (version
``EVIDENCE_SCHEMA``) and read back with ``Evidence.from_json``, which raises
``ValidationError`` naming the first bad field.

Invariants: the JSON is plain (finite numbers or ``null``, strings, lists,
objects) and ``Evidence.from_json(e.to_json()) == e`` for every ``e`` that
``make_evidence`` builds, because values are rounded when the typed object is
built, not when it is written; exactly one candidate row is the baseline and
at most one is chosen; equal inputs give equal evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from core.errors import ValidationError
from core.feedback.calibration import Calibration, CalibrationRow
from core.feedback.observations import Observation
from core.feedback.outcomes import OutcomeSummary, summarize_outcomes
from core.feedback.policy import FeedbackPolicy
from core.feedback.scoring import SearchResult
from core.feedback.wire import (
    Fields,
    money_json,
    money_value,
    num,
    weights_json,
    weights_value,
)
from core.model import COMPONENTS, SchedulerWeights, WorkloadClass

EVIDENCE_SCHEMA = 1
METHOD = ("actual/predicted ratios per (GPU type, workload class) calibrate the performance "
          "model; recent traffic is replayed on the calibrated twin under candidate weights "
          "near the active ones")
_THOUSAND = Decimal(1000)


@dataclass(frozen=True, slots=True)
class CandidateRow:
    """One weight vector the replay scored: the active weights (``baseline``) or a candidate."""

    label: str
    round: int  # 0: the active weights, 1: single moves, 2: joined moves
    weights: SchedulerWeights
    cost_per_1k: Decimal | None  # simulated US dollars per 1,000 inferences
    sla_attainment: float | None
    improvement: float | None  # relative drop of cost per 1k against the active weights
    eligible: bool
    chosen: bool = False
    baseline: bool = False
    energy_per_inference_j: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "baseline": self.baseline, "chosen": self.chosen,
                "round": self.round, "weights": weights_json(self.weights),
                "cost_per_1k": money_json(self.cost_per_1k),
                "sla_attainment": self.sla_attainment, "improvement": self.improvement,
                "eligible": self.eligible, "energy_per_inference_j": self.energy_per_inference_j}

    @classmethod
    def read(cls, f: Fields) -> CandidateRow:
        return cls(label=f.text("label"), round=f.count("round"), weights=f.weights("weights"),
                   cost_per_1k=f.opt_money("cost_per_1k"),
                   sla_attainment=f.opt_real("sla_attainment", low=0.0, high=1.0),
                   improvement=f.opt_real("improvement"), eligible=f.flag("eligible"),
                   chosen=f.flag("chosen"), baseline=f.flag("baseline"),
                   energy_per_inference_j=f.opt_real("energy_per_inference_j"))


@dataclass(frozen=True, slots=True)
class EvidencePoint:
    """One observed replica: predicted against actual (``None``: could not be measured)."""

    owner: str
    model: str
    gpu: str  # "<node>/gpu<index>"
    gpu_type: str
    workload_class: WorkloadClass
    share_pct: int
    decision: bool  # placed by the scheduler
    weight_version: int | None
    served_qps: float | None
    predicted_capacity_rps: float | None
    actual_capacity_rps: float | None
    predicted_latency_ms: float | None
    actual_latency_ms: float | None
    cost_per_1k: Decimal | None
    power_cost_per_hour: Decimal | None
    utilization_efficiency: float | None

    @classmethod
    def of(cls, o: Observation) -> EvidencePoint:
        return cls(
            owner=o.owner, model=o.model, gpu=f"{o.node}/gpu{o.gpu_index}", gpu_type=o.gpu_type,
            workload_class=o.workload_class, share_pct=o.share_pct, decision=o.decision,
            weight_version=o.weight_version, served_qps=num(o.served_qps, 4),
            predicted_capacity_rps=num(o.predicted_capacity_rps, 4),
            actual_capacity_rps=num(o.actual_capacity_rps, 4),
            predicted_latency_ms=num(o.predicted_latency_ms, 2),
            actual_latency_ms=num(o.actual_latency_ms, 2),
            cost_per_1k=money_value(o.cost_per_inference * _THOUSAND, 8)
            if o.cost_per_inference is not None else None,
            power_cost_per_hour=money_value(o.power_cost_per_hour, 6),
            utilization_efficiency=num(o.utilization_efficiency, 4))

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner, "model": self.model, "gpu": self.gpu, "gpu_type": self.gpu_type,
            "workload_class": self.workload_class.value, "share_pct": self.share_pct,
            "decision": self.decision, "weight_version": self.weight_version,
            "served_qps": self.served_qps, "predicted_capacity_rps": self.predicted_capacity_rps,
            "actual_capacity_rps": self.actual_capacity_rps,
            "predicted_latency_ms": self.predicted_latency_ms,
            "actual_latency_ms": self.actual_latency_ms,
            "cost_per_1k": money_json(self.cost_per_1k),
            "power_cost_per_hour": money_json(self.power_cost_per_hour),
            "utilization_efficiency": self.utilization_efficiency,
        }

    @classmethod
    def read(cls, f: Fields) -> EvidencePoint:
        return cls(
            owner=f.text("owner"), model=f.text("model"), gpu=f.text("gpu"),
            gpu_type=f.text("gpu_type"), workload_class=f.choice("workload_class", WorkloadClass),
            share_pct=f.count("share_pct"), decision=f.flag("decision"),
            weight_version=f.opt_count("weight_version"),
            served_qps=f.opt_real("served_qps", low=0.0),
            predicted_capacity_rps=f.opt_real("predicted_capacity_rps", low=0.0),
            actual_capacity_rps=f.opt_real("actual_capacity_rps", low=0.0),
            predicted_latency_ms=f.opt_real("predicted_latency_ms", low=0.0),
            actual_latency_ms=f.opt_real("actual_latency_ms", low=0.0),
            cost_per_1k=f.opt_money("cost_per_1k"),
            power_cost_per_hour=f.opt_money("power_cost_per_hour"),
            utilization_efficiency=f.opt_real("utilization_efficiency", low=0.0))


@dataclass(frozen=True, slots=True)
class ObservedReplicas:
    """How many replicas were observed and compared; the first ``max_evidence_points`` shown."""

    count: int
    comparable: int
    points: tuple[EvidencePoint, ...] = ()

    @property
    def shown(self) -> int:
        return len(self.points)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "comparable": self.comparable, "shown": self.shown,
                "points": [p.to_json() for p in self.points]}

    @classmethod
    def read(cls, f: Fields) -> ObservedReplicas:
        return cls(count=f.count("count"), comparable=f.count("comparable"),
                   points=tuple(EvidencePoint.read(p) for p in f.objects("points")))


@dataclass(frozen=True, slots=True)
class EvidenceSummary:
    """The headline comparison: the active weights against the proposed ones on the replay."""

    baseline_cost_per_1k: Decimal | None
    baseline_sla_attainment: float | None
    candidates: int
    proposed_cost_per_1k: Decimal | None = None
    improvement: float | None = None
    proposed_sla_attainment: float | None = None
    why_not: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"baseline_cost_per_1k": money_json(self.baseline_cost_per_1k),
                "proposed_cost_per_1k": money_json(self.proposed_cost_per_1k),
                "improvement": self.improvement,
                "baseline_sla_attainment": self.baseline_sla_attainment,
                "proposed_sla_attainment": self.proposed_sla_attainment,
                "candidates": self.candidates, "why_not": self.why_not}

    @classmethod
    def read(cls, f: Fields) -> EvidenceSummary:
        return cls(baseline_cost_per_1k=f.opt_money("baseline_cost_per_1k"),
                   baseline_sla_attainment=f.opt_real("baseline_sla_attainment", low=0.0,
                                                      high=1.0),
                   candidates=f.count("candidates"),
                   proposed_cost_per_1k=f.opt_money("proposed_cost_per_1k"),
                   improvement=f.opt_real("improvement"),
                   proposed_sla_attainment=f.opt_real("proposed_sla_attainment", low=0.0,
                                                      high=1.0),
                   why_not=f.text("why_not") if f.has("why_not") else "")


@dataclass(frozen=True, slots=True)
class EvidencePolicy:
    """The policy knobs the proposal was made under."""

    max_step: float
    min_improvement: float
    sla_tolerance: float
    replay_window_s: float

    def to_json(self) -> dict[str, Any]:
        return {"max_step": self.max_step, "min_improvement": self.min_improvement,
                "sla_tolerance": self.sla_tolerance, "replay_window_s": self.replay_window_s}

    @classmethod
    def read(cls, f: Fields) -> EvidencePolicy:
        return cls(max_step=f.real("max_step", low=0.0),
                   min_improvement=f.real("min_improvement", low=0.0),
                   sla_tolerance=f.real("sla_tolerance", low=0.0),
                   replay_window_s=f.real("replay_window_s", low=0.0))


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything stored with a proposal (JSON version ``EVIDENCE_SCHEMA``)."""

    generated_at: datetime
    based_on_version: int | None
    active: SchedulerWeights
    proposed: SchedulerWeights
    policy: EvidencePolicy
    summary: EvidenceSummary
    observations: ObservedReplicas
    outcomes: OutcomeSummary
    calibration: tuple[CalibrationRow, ...] = ()
    candidates: tuple[CandidateRow, ...] = ()
    method: str = METHOD
    schema: int = EVIDENCE_SCHEMA

    def __post_init__(self) -> None:
        if sum(1 for r in self.candidates if r.baseline) != (1 if self.candidates else 0):
            raise ValidationError("evidence.candidates", "needs exactly one baseline row")
        if sum(1 for r in self.candidates if r.chosen) > 1:
            raise ValidationError("evidence.candidates", "has more than one chosen row")

    @property
    def change(self) -> dict[str, float]:
        """Proposed minus active, per component."""
        a, p = self.active.as_dict(), self.proposed.as_dict()
        return {c: round(p[c] - a[c], 9) for c in COMPONENTS}

    @property
    def chosen(self) -> CandidateRow | None:
        return next((r for r in self.candidates if r.chosen), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "generated_at": self.generated_at.isoformat(),
            "method": self.method,
            "based_on_version": self.based_on_version,
            "active": weights_json(self.active),
            "proposed": weights_json(self.proposed),
            "change": self.change,
            "policy": self.policy.to_json(),
            "summary": self.summary.to_json(),
            "calibration": [r.to_json() for r in self.calibration],
            "observations": self.observations.to_json(),
            "outcomes": self.outcomes.to_json(),
            "candidates": [r.to_json() for r in self.candidates],
        }

    @classmethod
    def from_json(cls, data: object) -> Evidence:
        """Read stored evidence; ``ValidationError`` names the first field that is wrong."""
        f = Fields(data, "evidence")
        schema = f.count("schema")
        if schema != EVIDENCE_SCHEMA:
            raise ValidationError(f.at("schema"), f"version {schema} is not known (this "
                                                  f"version reads {EVIDENCE_SCHEMA})")
        return cls(
            schema=schema, generated_at=f.when("generated_at"), method=f.text("method"),
            based_on_version=f.opt_count("based_on_version"), active=f.weights("active"),
            proposed=f.weights("proposed"), policy=EvidencePolicy.read(f.obj("policy")),
            summary=EvidenceSummary.read(f.obj("summary")),
            observations=ObservedReplicas.read(f.obj("observations")),
            outcomes=OutcomeSummary.read(f.obj("outcomes")),
            calibration=tuple(CalibrationRow.read(r) for r in f.objects("calibration")),
            candidates=tuple(CandidateRow.read(r) for r in f.objects("candidates")))


def make_evidence(*, active: SchedulerWeights, active_version: int | None,
                  result: SearchResult, calibration: Calibration,
                  observations: Sequence[Observation], policy: FeedbackPolicy,
                  now: datetime) -> Evidence:
    """The evidence of one search: its comparison rows, calibration and observations."""
    chosen = result.chosen
    proposed = chosen.candidate.weights if chosen else active
    base = result.baseline
    points = sorted(observations, key=lambda o: (not o.decision, -o.served_qps, o.owner))
    shown = points[: policy.max_evidence_points]
    rows = [CandidateRow(label="active", baseline=True, round=0, weights=weights_value(active),
                         cost_per_1k=money_value(base.cost_per_1k, 8),
                         sla_attainment=num(base.sla_attainment, 6), improvement=0.0,
                         eligible=False,
                         energy_per_inference_j=num(base.energy_per_inference_j, 4))]
    rows += [CandidateRow(label=s.candidate.label, chosen=s is chosen, round=s.round,
                          weights=weights_value(s.candidate.weights),
                          cost_per_1k=money_value(s.score.cost_per_1k, 8),
                          sla_attainment=num(s.score.sla_attainment, 6),
                          improvement=num(s.improvement, 6), eligible=s.eligible,
                          energy_per_inference_j=num(s.score.energy_per_inference_j, 4))
             for s in result.scored]
    summary = EvidenceSummary(
        baseline_cost_per_1k=money_value(base.cost_per_1k, 8),
        proposed_cost_per_1k=money_value(chosen.score.cost_per_1k, 8) if chosen else None,
        improvement=num(chosen.improvement, 6) if chosen else None,
        baseline_sla_attainment=num(base.sla_attainment, 6),
        proposed_sla_attainment=num(chosen.score.sla_attainment, 6) if chosen else None,
        candidates=len(result.scored), why_not=result.why_not)
    return Evidence(
        generated_at=now if now.tzinfo is not None else now.replace(tzinfo=UTC),
        based_on_version=active_version, active=weights_value(active),
        proposed=weights_value(proposed),
        policy=EvidencePolicy(max_step=policy.max_step, min_improvement=policy.min_improvement,
                              sla_tolerance=policy.sla_tolerance,
                              replay_window_s=policy.replay_window_s),
        summary=summary, calibration=calibration.rows(),
        observations=ObservedReplicas(count=len(observations),
                                      comparable=sum(1 for o in observations if o.comparable),
                                      points=tuple(EvidencePoint.of(o) for o in shown)),
        outcomes=summarize_outcomes(observations), candidates=tuple(rows))


def build_evidence(*, active: SchedulerWeights, active_version: int | None,
                   result: SearchResult, calibration: Calibration,
                   observations: Sequence[Observation], policy: FeedbackPolicy,
                   now: datetime) -> dict[str, Any]:
    """``make_evidence`` as the JSON stored with a proposal; its shape:

    ``{"schema", "generated_at", "method", "based_on_version", "active", "proposed",
    "change", "policy", "summary", "calibration": [row…], "observations": {"count",
    "comparable", "shown", "points": [point…]}, "outcomes", "candidates": [row…]}``
    """
    return make_evidence(active=active, active_version=active_version, result=result,
                         calibration=calibration, observations=observations, policy=policy,
                         now=now).to_json()
