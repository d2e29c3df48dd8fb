"""The rollout circuit breaker (SPEC §4.3) as a pure, durable value.

Why: a fleet where updates keep failing must stop updating by itself until a
person looks. Three failed updates in a row open the breaker (no plan starts;
an alert and a notification go out); after the cooldown (one hour) it is
half-open and lets exactly one trial plan start; that trial's success closes
it, its failure opens it again for another cooldown.

Invariants: the value is immutable and every method returns the next one, so
the controller stores it (``FlagKey.ROLLOUT_BREAKER``) in the same transaction
as the plan transition that changed it; ``to_json`` / ``from_json`` round-trip;
time is passed in. A plan stopped by a person (abort, roll back) is neither a
success nor a failure and leaves the count alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from core.errors import ValidationError

FAILURES_TO_OPEN = 3
COOLDOWN_S = 3600.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float | None = None
    trial_plan: int | None = None  # the plan let through while half-open
    last_failure: str = ""
    threshold: int = FAILURES_TO_OPEN
    cooldown_s: float = COOLDOWN_S

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValidationError("breaker.threshold", "must be ≥ 1")
        if self.cooldown_s <= 0:
            raise ValidationError("breaker.cooldown_s", "must be > 0")

    def current(self, now: float) -> Breaker:
        """The breaker as of ``now``: an open one whose cooldown ended is half-open."""
        if self.state is BreakerState.OPEN and self.opened_at is not None \
                and now >= self.opened_at + self.cooldown_s:
            return replace(self, state=BreakerState.HALF_OPEN, trial_plan=None)
        return self

    def may_start(self, plan_id: int, now: float) -> tuple[bool, str]:
        """Whether ``plan_id`` may start now, and why not."""
        b = self.current(now)
        if b.state is BreakerState.CLOSED:
            return True, ""
        if b.state is BreakerState.OPEN:
            assert b.opened_at is not None
            left = b.opened_at + b.cooldown_s - now
            return False, (f"circuit breaker open after {b.consecutive_failures} failed "
                           f"updates in a row (last: {b.last_failure or 'unknown'}); "
                           f"half-open in {left:.0f} s")
        if b.trial_plan is None or b.trial_plan == plan_id:
            return True, ""
        return False, f"circuit breaker half-open: plan {b.trial_plan} is the one trial update"

    def started(self, plan_id: int, now: float) -> Breaker:
        """``plan_id`` started; while half-open it becomes the trial."""
        b = self.current(now)
        if b.state is BreakerState.HALF_OPEN:
            return replace(b, trial_plan=plan_id)
        return b

    def succeeded(self, now: float) -> Breaker:
        """An update succeeded: the breaker closes and the count starts again."""
        return replace(self.current(now), state=BreakerState.CLOSED, consecutive_failures=0,
                       opened_at=None, trial_plan=None)

    def failed(self, now: float, *, reason: str) -> Breaker:
        """An update failed: counted; the threshold (or a failed trial) opens the breaker."""
        b = self.current(now)
        count = b.consecutive_failures + 1
        if b.state is BreakerState.HALF_OPEN or count >= b.threshold:
            return replace(b, state=BreakerState.OPEN, consecutive_failures=count,
                           opened_at=now, trial_plan=None, last_failure=reason)
        return replace(b, consecutive_failures=count, last_failure=reason)

    def released(self, plan_id: int) -> Breaker:
        """``plan_id`` ended without a verdict (a person stopped it): if it was the half-open
        trial, the next plan may be the trial instead."""
        return replace(self, trial_plan=None) if self.trial_plan == plan_id else self

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "consecutive_failures": self.consecutive_failures,
                "opened_at": self.opened_at, "trial_plan": self.trial_plan,
                "last_failure": self.last_failure, "threshold": self.threshold,
                "cooldown_s": self.cooldown_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Breaker:
        if not data:
            return cls()
        opened = data.get("opened_at")
        trial = data.get("trial_plan")
        return cls(state=BreakerState(data.get("state", "closed")),
                   consecutive_failures=int(data.get("consecutive_failures", 0)),
                   opened_at=None if opened is None else float(opened),
                   trial_plan=None if trial is None else int(trial),
                   last_failure=str(data.get("last_failure", "")),
                   threshold=int(data.get("threshold", FAILURES_TO_OPEN)),
                   cooldown_s=float(data.get("cooldown_s", COOLDOWN_S)))
