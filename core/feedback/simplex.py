"""Step 3 of the feedback loop: candidate weight vectors near the active ones, on the simplex.

Why: SPEC §3.7 allows a proposal to move each component by at most
``max_step``; the search only ever scores vectors this module builds, so the
bound holds by construction rather than by a check after the fact.

Invariants: every ``Candidate`` is a valid ``SchedulerWeights`` (each component
in [0, 1], the sum 1 to within ``SUM_EPS``) that moves no component by more
than ``max_step`` (to within ``SUM_EPS``) nor all by less than ``_MIN_MOVE``;
the order is deterministic and duplicates are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.errors import ValidationError
from core.feedback.policy import FeedbackPolicy
from core.model import COMPONENTS, SchedulerWeights

# Float slack for the sum-to-1 and step bounds (SchedulerWeights itself allows 1e-6).
SUM_EPS = 1e-9
_MIN_MOVE = 1e-6  # a move smaller than this is no candidate


@dataclass(frozen=True, slots=True)
class Candidate:
    """A weight vector near the active one, and the moves that made it."""

    weights: SchedulerWeights
    moves: tuple[tuple[str, float], ...]  # (component, change), components in COMPONENTS order

    @property
    def label(self) -> str:
        return ", ".join(f"{c} {d:+.3f}" for c, d in self.moves) or "active"

    @property
    def max_move(self) -> float:
        return max((abs(d) for _, d in self.moves), default=0.0)


def max_move(a: SchedulerWeights, b: SchedulerWeights) -> float:
    """The largest change of any one component between two weight vectors."""
    da, db = a.as_dict(), b.as_dict()
    return max(abs(da[c] - db[c]) for c in COMPONENTS)


def shifted(active: SchedulerWeights, moves: Mapping[str, float], *,
            max_step: float) -> Candidate | None:
    """``active`` with ``moves`` applied, or ``None`` when that leaves the bounds.

    Moves must net to zero. The float remainder of the sum is put on an
    unmoved component (the one with the most room), so the result sums to 1 to
    within ``SUM_EPS``, every component stays in [0, 1] and none moves by more
    than ``max_step``.
    """
    if any(c not in COMPONENTS for c in moves):
        raise ValidationError("weights", "unknown score component in a move")
    if abs(math.fsum(moves.values())) > SUM_EPS:
        return None  # the moves do not net to zero
    base = active.as_dict()
    values = {c: base[c] + moves.get(c, 0.0) for c in COMPONENTS}
    if any(v < -SUM_EPS or v > 1.0 + SUM_EPS for v in values.values()):
        return None
    values = {c: min(max(v, 0.0), 1.0) for c, v in values.items()}
    # The remainder (float rounding, plus whatever the active weights were off 1 by) goes
    # on an unmoved component when there is one, so moved ones stay within the step.
    untouched = [c for c in COMPONENTS if abs(moves.get(c, 0.0)) < _MIN_MOVE] or list(COMPONENTS)
    fix = max(untouched, key=lambda c: min(values[c], 1.0 - values[c]))
    values[fix] = min(max(values[fix] + 1.0 - math.fsum(values.values()), 0.0), 1.0)
    if abs(math.fsum(values.values()) - 1.0) > SUM_EPS:
        return None
    delta = {c: values[c] - base[c] for c in COMPONENTS}
    largest = max(abs(d) for d in delta.values())
    if largest > max_step + SUM_EPS or largest < _MIN_MOVE:
        return None
    weights = SchedulerWeights(**values)
    return Candidate(weights, tuple((c, round(delta[c], 12)) for c in COMPONENTS
                                    if abs(delta[c]) >= _MIN_MOVE))


def candidates(active: SchedulerWeights, policy: FeedbackPolicy | None = None
               ) -> list[Candidate]:
    """First-round candidates: move ``step`` from one component to another, every ordered pair.

    ``step`` is each of ``step_fractions × max_step``, shrunk where the donor
    has less than that or the receiver would pass 1. Deterministic order;
    duplicates dropped.
    """
    policy = policy or FeedbackPolicy()
    base = active.as_dict()
    seen: set[tuple[float, ...]] = set()
    out: list[Candidate] = []
    for fraction in policy.step_fractions:
        step = policy.max_step * fraction
        for gain in COMPONENTS:
            for give in COMPONENTS:
                if gain == give:
                    continue
                amount = min(step, base[give], 1.0 - base[gain])
                if amount < _MIN_MOVE:
                    continue
                cand = shifted(active, {gain: amount, give: -amount}, max_step=policy.max_step)
                if cand is None:
                    continue
                key = tuple(round(cand.weights.as_dict()[c], 9) for c in COMPONENTS)
                if key not in seen:
                    seen.add(key)
                    out.append(cand)
    return out


def combined(active: SchedulerWeights, moves: Sequence[Candidate], *,
             policy: FeedbackPolicy) -> list[Candidate]:
    """Second-round candidates: the first move joined with each later one on other components."""
    if not moves:
        return []
    first, out = moves[0], []
    used = {c for c, _ in first.moves}
    for other in moves[1:]:
        if len(out) >= policy.combine_top:
            break
        if used & {c for c, _ in other.moves}:
            continue
        joined = dict(first.moves) | dict(other.moves)
        cand = shifted(active, joined, max_step=policy.max_step)
        if cand is not None:
            out.append(cand)
    return out
