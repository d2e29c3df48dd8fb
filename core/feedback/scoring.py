"""Step 4 of the feedback loop: score the active weights and every candidate on the injected
evaluator (a replay of recent traffic on the calibrated twin) and pick the cheapest
eligible one.

Why: the choice rule (SPEC §3.7) lives in one place: a candidate is eligible
only when it lowers the simulated cost per 1,000 inferences by
``min_improvement`` and its SLA attainment does not fall by more than
``sla_tolerance``.

Invariants: the evaluator is the only source of scores and is called once per
vector, baseline first; ties break on SLA attainment, then the smaller move,
then the label, so equal inputs choose the same candidate; nothing is chosen
when the baseline cost is zero (nothing to lower); ``why_not`` says in one
line why nothing was chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from core.errors import ValidationError
from core.feedback.policy import FeedbackPolicy
from core.feedback.simplex import Candidate, candidates, combined
from core.model import SchedulerWeights


@dataclass(frozen=True, slots=True)
class CandidateScore:
    """What the evaluator (a replay on the calibrated twin) says of one weight vector."""

    cost_per_1k: Decimal  # US dollars per 1,000 inferences served
    sla_attainment: float  # fraction of requests within their SLA, 0..1
    energy_per_inference_j: float | None = None
    inferences: int | None = None

    def __post_init__(self) -> None:
        try:
            cost = self.cost_per_1k if isinstance(self.cost_per_1k, Decimal) else \
                Decimal(str(float(self.cost_per_1k)))
        except (InvalidOperation, TypeError, ValueError):
            raise ValidationError("cost_per_1k", "must be a number") from None
        if not cost.is_finite() or cost < 0:
            raise ValidationError("cost_per_1k", "must be a finite number ≥ 0")
        object.__setattr__(self, "cost_per_1k", cost)
        s = self.sla_attainment
        if not isinstance(s, int | float) or not math.isfinite(s) or not 0.0 <= s <= 1.0:
            raise ValidationError("sla_attainment", "must be within 0..1")


Evaluator = Callable[[SchedulerWeights], CandidateScore]


@dataclass(frozen=True, slots=True)
class Scored:
    """One candidate with its score and how it compares with the active weights."""

    candidate: Candidate
    score: CandidateScore
    improvement: float  # relative drop of cost per 1k against the active weights
    eligible: bool  # improvement ≥ margin and SLA attainment not lower
    round: int  # 1: single moves, 2: joined moves


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Every vector scored in one search, and the one chosen (if any)."""

    baseline: CandidateScore  # the active weights on the same replay
    scored: tuple[Scored, ...]
    chosen: Scored | None
    why_not: str = ""  # when nothing is chosen, the reason in one line


def search(active: SchedulerWeights, evaluate: Evaluator, *,
           policy: FeedbackPolicy | None = None) -> SearchResult:
    """Score the active weights and every candidate; pick the cheapest eligible one."""
    policy = policy or FeedbackPolicy()
    baseline = evaluate(active)
    scored = [_score(c, evaluate(c.weights), baseline=baseline, policy=policy, round_=1)
              for c in candidates(active, policy)]
    improving = sorted((s for s in scored if s.eligible), key=_rank)
    if policy.combine_top and improving:
        for c in combined(active, [s.candidate for s in improving], policy=policy):
            scored.append(_score(c, evaluate(c.weights), baseline=baseline, policy=policy,
                                 round_=2))
    eligible = sorted((s for s in scored if s.eligible), key=_rank)
    chosen = eligible[0] if eligible and baseline.cost_per_1k > 0 else None
    why = ""
    if chosen is None:
        if baseline.cost_per_1k <= 0:
            why = "the replay served no inferences at a cost, so there is nothing to lower"
        elif not scored:
            why = "no candidate weights within the step bound"
        else:
            best = max(scored, key=lambda s: s.improvement)
            why = (f"no candidate lowers the simulated cost per 1k inferences by "
                   f"{policy.min_improvement:.1%} without lowering SLA attainment "
                   f"(best: {best.improvement:+.2%}, {best.candidate.label})")
    return SearchResult(baseline, tuple(scored), chosen, why)


def _score(c: Candidate, score: CandidateScore, *, baseline: CandidateScore,
           policy: FeedbackPolicy, round_: int) -> Scored:
    base = baseline.cost_per_1k
    improvement = float((base - score.cost_per_1k) / base) if base > 0 else 0.0
    sla_ok = score.sla_attainment >= baseline.sla_attainment - policy.sla_tolerance
    eligible = base > 0 and sla_ok and improvement >= policy.min_improvement
    return Scored(c, score, improvement, eligible, round_)


def _rank(s: Scored) -> tuple[float, float, float, str]:
    return (-s.improvement, -s.score.sla_attainment, s.candidate.max_move, s.candidate.label)
