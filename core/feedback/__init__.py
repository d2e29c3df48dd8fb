"""Optimization feedback (SPEC §3.7): observed outcomes → calibrated model → weight proposal.

Why: the scheduler's weights and the simulator's performance model are both
guesses until the fleet has run. This package compares what each placement was
predicted to deliver with what it delivers, turns the differences into a
calibration of the performance model, and searches near the active weights for
a vector that the (calibrated) simulator says serves the same traffic more
cheaply without missing more SLAs. It is pure: telemetry, the fleet, the
evaluator and ``now`` come in as arguments; nothing is read or written here.

One module per step, each a public function so the controller can log or reuse
it:

1. ``observations.observe`` — per placed replica: served QPS; predicted and actual
   throughput capacity (the actual one implied by the GPU's measured
   utilization against the utilization the model predicts for the served
   load); predicted and actual mean latency; $/inference, power cost and
   utilization efficiency (``outcomes`` sums them for the fleet).
2. ``calibration.calibrate`` — per (GPU type, workload class): the median of the
   clipped actual/predicted ratios, with its count; ``calibrated_perf_model``
   applies it.
3. ``simplex.candidates`` — weight vectors near the active ones: one component gains
   what another loses, by ``max_step`` (and the fractions of it the policy
   names); a second round joins the best improving moves on disjoint components.
4. ``scoring.search`` — every candidate and the active weights go through the injected
   evaluator (a replay of recent traffic on the calibrated twin); the cheapest
   candidate is eligible only when it lowers the simulated cost per 1,000
   inferences by ``min_improvement`` and its SLA attainment does not fall (by
   more than ``sla_tolerance``, default 0).
5. ``proposal.run_feedback`` / ``feedback_step`` — one run end to end, a
   ``Proposal`` with its ``evidence`` (the JSON of ``evidence.Evidence``) or why
   there is none.
6. ``auto_apply.within_auto_apply_bounds`` — whether a proposal may take effect
   without an approver.

What crosses processes is typed, with one JSON form each: ``Evidence`` (stored
with a proposal) and ``FeedbackRun`` (the published last run, with its
``RunOutcome``); ``wire`` holds the rounding and validating readers they share.

Invariants: every candidate and every proposal is a valid ``SchedulerWeights``
(each component in [0, 1], the sum 1 to within ``SUM_EPS``) and moves no
component by more than ``max_step`` (to within ``SUM_EPS``) from the active
weights; no proposal without the improvement margin or with lower SLA
attainment; equal inputs give equal outputs (deterministic order, no
randomness); the evidence is plain JSON (finite numbers, strings, lists,
dicts) so it can be stored as-is in the ``evidence`` column.
"""

from core.feedback.auto_apply import auto_apply_violations, within_auto_apply_bounds
from core.feedback.calibration import (
    Calibration,
    CalibrationEntry,
    CalibrationRow,
    calibrate,
    calibrated_perf_model,
)
from core.feedback.evidence import (
    EVIDENCE_SCHEMA,
    CandidateRow,
    Evidence,
    EvidencePoint,
    EvidencePolicy,
    EvidenceSummary,
    ObservedReplicas,
    build_evidence,
    make_evidence,
)
from core.feedback.observations import Observation, PlacedReplica, observe
from core.feedback.outcomes import (
    GpuTypeOutcome,
    OutcomeSummary,
    outcome_summary,
    summarize_outcomes,
)
from core.feedback.policy import FeedbackPolicy, due
from core.feedback.proposal import FeedbackOutcome, Proposal, feedback_step, run_feedback
from core.feedback.run import LAST_RUN_FLAG, RUN_SCHEMA, FeedbackRun, RunOutcome, ScoredRow
from core.feedback.scoring import CandidateScore, Evaluator, Scored, SearchResult, search
from core.feedback.simplex import SUM_EPS, Candidate, candidates, combined, max_move, shifted

__all__ = [
    "EVIDENCE_SCHEMA",
    "LAST_RUN_FLAG",
    "RUN_SCHEMA",
    "SUM_EPS",
    "Calibration",
    "CalibrationEntry",
    "CalibrationRow",
    "Candidate",
    "CandidateRow",
    "CandidateScore",
    "Evaluator",
    "Evidence",
    "EvidencePoint",
    "EvidencePolicy",
    "EvidenceSummary",
    "FeedbackOutcome",
    "FeedbackPolicy",
    "FeedbackRun",
    "GpuTypeOutcome",
    "Observation",
    "ObservedReplicas",
    "OutcomeSummary",
    "PlacedReplica",
    "Proposal",
    "RunOutcome",
    "Scored",
    "ScoredRow",
    "SearchResult",
    "auto_apply_violations",
    "build_evidence",
    "calibrate",
    "calibrated_perf_model",
    "candidates",
    "combined",
    "due",
    "feedback_step",
    "make_evidence",
    "max_move",
    "observe",
    "outcome_summary",
    "run_feedback",
    "search",
    "shifted",
    "summarize_outcomes",
    "within_auto_apply_bounds",
]
