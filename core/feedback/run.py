"""The published result of one feedback run (store flag ``feedback.last_run``).

Why: the controller runs the loop in its own process and the Scheduler weights
page shows the latest run in another, possibly of another version. The run
crosses as ``FeedbackRun.to_json()`` and is read back with
``FeedbackRun.from_json``, which refuses a garbled payload whole with a
``ValidationError`` naming the field, so a console shows "unknown" instead of
half a run.

Invariants: ``FeedbackRun.from_json(r.to_json()) == r``; the outcome and the
proposed version agree (``proposed``/``applied`` carry the version,
``no-change``/``failed`` carry none and say why); ``comparable`` never exceeds
``observations``; a payload written before the outcome existed (no
``schema``) still reads, its outcome derived from the fields it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from core.errors import ValidationError
from core.feedback.observations import Observation
from core.feedback.proposal import FeedbackOutcome
from core.feedback.wire import Fields, money_json, money_value

LAST_RUN_FLAG = "feedback.last_run"
RUN_SCHEMA = 1
_PATH = LAST_RUN_FLAG
_MAX_REASON = 500  # characters of a failure kept in the payload


class RunOutcome(StrEnum):
    """How a feedback run ended."""

    PROPOSED = "proposed"  # a proposal waits for an approver
    APPLIED = "applied"  # a proposal was made and applied itself (auto-apply)
    NO_CHANGE = "no-change"  # nothing cleared the margin, or too little to compare
    FAILED = "failed"  # the run stopped on an error; retried at the next interval


_WITH_VERSION = (RunOutcome.PROPOSED, RunOutcome.APPLIED)


@dataclass(frozen=True, slots=True)
class ScoredRow:
    """One candidate of the run, against the active weights on the same replay."""

    candidate: str  # the candidate's label ("mps +0.050, power -0.050")
    cost_per_1k: Decimal  # simulated US dollars per 1,000 inferences
    sla: float  # simulated SLA attainment, 0..1
    improvement: float  # relative drop of cost per 1k against the active weights
    eligible: bool  # clears the margin without lowering SLA attainment

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "cost_per_1k": money_json(self.cost_per_1k),
                "sla": self.sla, "improvement": self.improvement, "eligible": self.eligible}

    @classmethod
    def read(cls, f: Fields) -> ScoredRow:
        return cls(candidate=f.text("candidate"), cost_per_1k=f.money("cost_per_1k"),
                   sla=f.real("sla", low=0.0, high=1.0), improvement=f.real("improvement"),
                   eligible=f.flag("eligible"))


@dataclass(frozen=True, slots=True)
class FeedbackRun:
    """One feedback run as the controller publishes it."""

    at: float  # when the run started, seconds since the epoch (the controller's clock)
    outcome: RunOutcome
    why_not: str = ""  # without a proposal: the reason (for a failed run, the error)
    proposed_version: int | None = None
    seconds: float = 0.0  # how long the run took
    observations: int = 0  # replicas observed
    comparable: int = 0  # of those, with a prediction to compare
    deployments: int = 0  # deployments replayed
    replay_s: float = 0.0  # the replay window
    baseline_cost_per_1k: Decimal | None = None  # the active weights on the replay
    baseline_sla: float | None = None
    scored: tuple[ScoredRow, ...] = ()

    def __post_init__(self) -> None:
        if self.outcome in _WITH_VERSION and self.proposed_version is None:
            raise ValidationError(f"{_PATH}.proposed_version",
                                  f"is required when the outcome is {self.outcome}")
        if self.outcome not in _WITH_VERSION and self.proposed_version is not None:
            raise ValidationError(f"{_PATH}.proposed_version",
                                  f"must be empty when the outcome is {self.outcome}")
        if self.outcome not in _WITH_VERSION and not self.why_not:
            raise ValidationError(f"{_PATH}.why_not",
                                  f"must say why when the outcome is {self.outcome}")
        if self.comparable > self.observations:
            raise ValidationError(f"{_PATH}.comparable", "exceeds the observations")

    @property
    def candidates(self) -> int:
        return len(self.scored)

    @property
    def auto_applied(self) -> bool:
        return self.outcome is RunOutcome.APPLIED

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self.at, UTC)

    @classmethod
    def of_outcome(cls, outcome: FeedbackOutcome, *, at: float, seconds: float,
                   observations: Sequence[Observation], deployments: int, replay_s: float,
                   proposed_version: int | None, applied: bool) -> FeedbackRun:
        """The run a controller publishes after ``run_feedback`` (and storing its proposal)."""
        result = outcome.result
        if proposed_version is None:
            kind = RunOutcome.NO_CHANGE
        else:
            kind = RunOutcome.APPLIED if applied else RunOutcome.PROPOSED
        return cls(
            at=at, outcome=kind, why_not=outcome.why_not, proposed_version=proposed_version,
            seconds=round(seconds, 2), observations=len(observations),
            comparable=sum(1 for o in observations if o.comparable), deployments=deployments,
            replay_s=replay_s,
            baseline_cost_per_1k=_dollars(result.baseline.cost_per_1k) if result else None,
            baseline_sla=result.baseline.sla_attainment if result else None,
            scored=tuple(ScoredRow(candidate=s.candidate.label,
                                   cost_per_1k=_dollars(s.score.cost_per_1k),
                                   sla=s.score.sla_attainment, improvement=s.improvement,
                                   eligible=s.eligible)
                         for s in (result.scored if result else ())))

    @classmethod
    def failed(cls, *, at: float, seconds: float, error: BaseException | str) -> FeedbackRun:
        """A run that stopped on ``error`` (its type and message, shortened)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        text = text.strip() or "the run failed without a message"
        if len(text) > _MAX_REASON:
            text = text[: _MAX_REASON - 1] + "…"
        return cls(at=at, outcome=RunOutcome.FAILED, why_not=text, seconds=round(seconds, 2))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": RUN_SCHEMA, "outcome": self.outcome.value, "at": self.at,
            "seconds": self.seconds, "observations": self.observations,
            "comparable": self.comparable, "deployments": self.deployments,
            "replay_s": self.replay_s, "candidates": self.candidates,
            "baseline_cost_per_1k": money_json(self.baseline_cost_per_1k),
            "baseline_sla": self.baseline_sla, "proposed_version": self.proposed_version,
            # Kept for consoles that read the payload before ``outcome`` existed.
            "auto_applied": self.auto_applied, "why_not": self.why_not,
            "scored": [r.to_json() for r in self.scored],
        }

    @classmethod
    def from_json(cls, data: object) -> FeedbackRun:
        """Read a published run; ``ValidationError`` names the first field that is wrong."""
        f = Fields(data, _PATH)
        proposed_version = f.opt_count("proposed_version")
        if f.has("schema"):
            schema = f.count("schema")
            if schema != RUN_SCHEMA:
                raise ValidationError(f.at("schema"), f"version {schema} is not known (this "
                                                      f"version reads {RUN_SCHEMA})")
            outcome = f.choice("outcome", RunOutcome)
        elif proposed_version is None:  # written before the outcome existed
            outcome = RunOutcome.NO_CHANGE
        else:
            applied = f.flag("auto_applied") if f.has("auto_applied") else False
            outcome = RunOutcome.APPLIED if applied else RunOutcome.PROPOSED
        scored = tuple(ScoredRow.read(r) for r in f.objects("scored"))
        if f.has("candidates") and f.count("candidates") != len(scored):
            raise ValidationError(f.at("candidates"),
                                  f"says {f.count('candidates')} but {len(scored)} are listed")
        return cls(
            at=f.real("at", low=0.0), outcome=outcome,
            why_not=f.text("why_not") if f.has("why_not") else "",
            proposed_version=proposed_version, seconds=f.real("seconds", low=0.0),
            observations=f.count("observations"), comparable=f.count("comparable"),
            deployments=f.count("deployments"), replay_s=f.real("replay_s", low=0.0),
            baseline_cost_per_1k=f.opt_money("baseline_cost_per_1k"),
            baseline_sla=f.opt_real("baseline_sla", low=0.0, high=1.0), scored=scored)


def _dollars(x: Decimal) -> Decimal:
    """A score's cost as the JSON keeps it (``CandidateScore`` makes it finite)."""
    value = money_value(x)
    if value is None:
        raise ValidationError(f"{_PATH}.cost_per_1k", "must be a finite number")
    return value
