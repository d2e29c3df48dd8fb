"""Step 6 of the feedback loop: whether a proposal may take effect without an approver.

Why: SPEC §3.7 lets small proposals apply themselves when the operator turns
auto-apply on; the bounds are checked here, against the weights active *now*,
so a proposal made against other weights never applies itself.

Invariants: pure; ``within_auto_apply_bounds`` is exactly "no violations";
each violation is one line an operator can read.
"""

from __future__ import annotations

from core.feedback.policy import FeedbackPolicy
from core.feedback.proposal import Proposal
from core.feedback.simplex import SUM_EPS, max_move
from core.model import SchedulerWeights


def auto_apply_violations(active: SchedulerWeights, proposal: Proposal | SchedulerWeights, *,
                          policy: FeedbackPolicy) -> list[str]:
    """Why a proposal may not take effect without an approver (empty: it may)."""
    weights = proposal.weights if isinstance(proposal, Proposal) else proposal
    out = []
    if not policy.auto_apply:
        out.append("auto-apply is off")
    step = min(policy.auto_apply_max_step, policy.max_step)
    moved = max_move(active, weights)
    if moved > step + SUM_EPS:
        out.append(f"a component moves {moved:.3f} (auto-apply allows {step:.3f})")
    low = [c for c, v in weights.as_dict().items() if v < policy.auto_apply_min_weight - SUM_EPS]
    if low:
        out.append(f"{', '.join(low)} would fall below {policy.auto_apply_min_weight:.2f}")
    if isinstance(proposal, Proposal):
        if proposal.based_on != active:
            out.append("the active weights changed since the proposal was made")
        if proposal.expected.sla_attainment < proposal.baseline.sla_attainment:
            out.append("simulated SLA attainment would fall")
        if proposal.improvement < policy.min_improvement:
            out.append("the simulated improvement is below the margin")
    return out


def within_auto_apply_bounds(active: SchedulerWeights, proposal: Proposal | SchedulerWeights,
                             *, policy: FeedbackPolicy) -> bool:
    """Whether ``proposal`` may take effect without an approver (SPEC §3.7).

    ``active`` is the version active *now*: a proposal made against other
    weights is refused, and the step is measured from the current weights.
    """
    return not auto_apply_violations(active, proposal, policy=policy)
