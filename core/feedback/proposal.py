"""Step 5 of the feedback loop: one run end to end — a proposal with its evidence, or the
reason there is none.

Why: the controller (and the tests) call one function per run;
``run_feedback`` ties the steps together in SPEC §3.7's order and is the only
place a ``Proposal`` is made.

Invariants: no proposal from fewer than ``min_observations`` comparable
observations (and then the evaluator is not even called); a proposal's
weights are the chosen candidate's, so they keep every bound of
``core.feedback.simplex``; its evidence is the plain JSON of
``core.feedback.evidence.Evidence`` and its reason quotes the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.feedback.calibration import Calibration, calibrate
from core.feedback.evidence import build_evidence
from core.feedback.observations import Observation
from core.feedback.policy import FeedbackPolicy
from core.feedback.scoring import CandidateScore, Evaluator, SearchResult, search
from core.feedback.wire import dollars
from core.model import SchedulerWeights


@dataclass(frozen=True, slots=True)
class Proposal:
    """New weights with the reason and the evidence an approver reads."""

    weights: SchedulerWeights
    reason: str
    evidence: dict[str, Any] = field(repr=False)
    based_on: SchedulerWeights = field(repr=False)
    based_on_version: int | None
    improvement: float
    baseline: CandidateScore
    expected: CandidateScore


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """One feedback run: the proposal (or None) and, without one, why not."""

    proposal: Proposal | None
    why_not: str
    result: SearchResult | None = None


def run_feedback(*, active: SchedulerWeights, observations: Sequence[Observation],
                 evaluate: Evaluator, policy: FeedbackPolicy | None = None, now: datetime,
                 active_version: int | None = None,
                 calibration: Calibration | None = None) -> FeedbackOutcome:
    """One run of the loop: a proposal with its evidence, or the reason there is none.

    ``evaluate`` replays recent traffic under given weights (build it on
    ``calibrated_perf_model(perf, calibrate(observations, policy))`` and pass
    that ``calibration`` here so the evidence shows the one used). No proposal
    when fewer than ``min_observations`` observations compare prediction with
    outcome, or when no candidate clears the margin.
    """
    policy = policy or FeedbackPolicy()
    usable = [o for o in observations if o.comparable]
    if len(usable) < policy.min_observations:
        return FeedbackOutcome(None, f"{len(usable)} observations compare prediction with "
                                     f"outcome; {policy.min_observations} are needed")
    calibration = calibration or calibrate(observations, policy)
    result = search(active, evaluate, policy=policy)
    if result.chosen is None:
        return FeedbackOutcome(None, result.why_not, result)
    chosen = result.chosen
    evidence = build_evidence(active=active, active_version=active_version, result=result,
                              calibration=calibration, observations=observations,
                              policy=policy, now=now)
    base, new = result.baseline, chosen.score
    reason = (f"Simulated cost per 1k inferences {dollars(base.cost_per_1k)} → "
              f"{dollars(new.cost_per_1k)} ({-chosen.improvement:+.1%}), SLA attainment "
              f"{base.sla_attainment:.2%} → {new.sla_attainment:.2%}: "
              f"{chosen.candidate.label}. Calibrated on {len(usable)} observations.")
    proposal = Proposal(weights=chosen.candidate.weights, reason=reason, evidence=evidence,
                        based_on=active, based_on_version=active_version,
                        improvement=chosen.improvement, baseline=base, expected=new)
    return FeedbackOutcome(proposal, "", result)


def feedback_step(*, active: SchedulerWeights, observations: Sequence[Observation],
                  evaluate: Evaluator, policy: FeedbackPolicy | None = None, now: datetime,
                  active_version: int | None = None,
                  calibration: Calibration | None = None) -> Proposal | None:
    """``run_feedback``'s proposal alone."""
    return run_feedback(active=active, observations=observations, evaluate=evaluate,
                        policy=policy, now=now, active_version=active_version,
                        calibration=calibration).proposal
