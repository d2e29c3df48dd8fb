"""The states that durable records and controller results move through, as ``StrEnum``s.

Why: states used to be bare strings in several modules (the queue, the
controller, the pages), so a typo was a silent new state. Each enum here is the
one list of its values: the store derives its CHECK constraints from it
(``db.models``), code compares members, and JSON carries the values. Changing a
value is a schema change (a migration), so values are never renamed in place.
"""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    """A placement request in the durable queue.

    queued → claimed → placing → bound | failed; claimed/placing → queued when a
    claim expires or is released with attempts left; bound → removed when the
    replica is taken away again (scale-down, an operator).
    """

    QUEUED = "queued"
    CLAIMED = "claimed"
    PLACING = "placing"
    BOUND = "bound"
    FAILED = "failed"
    REMOVED = "removed"


# A request a worker holds (its claim lease runs).
HELD_STATES = (RequestState.CLAIMED, RequestState.PLACING)
# A request still on its way to a GPU.
IN_FLIGHT_STATES = (RequestState.QUEUED, RequestState.CLAIMED, RequestState.PLACING)


class PlacementStatus(StrEnum):
    """How one placement attempt of the controller ended."""

    BOUND = "bound"      # the pod was created (and Running, when the pass waits for it)
    QUEUED = "queued"    # given back to the queue; another pass retries it
    FAILED = "failed"    # out of attempts; the reason is stored
    LOST = "lost"        # another worker holds the claim now and finishes it


class WeightState(StrEnum):
    """A scheduler-weight version (SPEC §3.7); exactly one is active."""

    PROPOSED = "proposed"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled-back"


class AlertState(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class RolloutState(StrEnum):
    """A rollout plan of MPS configuration (SPEC §4); the transition table comes with
    the rollout engine."""

    DRAFT = "draft"
    AWAITING_APPROVAL = "awaiting-approval"
    APPROVED = "approved"
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_PROMOTION = "awaiting-promotion"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled-back"
    # Added with the rollout engine (migration 0008; ``core.rollout.machine`` is the table).
    ANALYZING = "analyzing"        # a canary or validation window is being watched
    ROLLING_BACK = "rolling-back"  # the controller restores every touched node


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled-back"


class AutoscalingAction(StrEnum):
    """What the autoscaler recorded for a deployment (SPEC §3.6)."""

    UP = "up"
    DOWN = "down"
    HOLD = "hold"  # a recommendation started its stabilization window


class FlagKey(StrEnum):
    """Keys of the store's control flags: operator switches and published status."""

    AUTOSCALING_PAUSED = "autoscaling.paused"    # operator: AutoscalingPause
    AUTOSCALING_STATUS = "autoscaling.status"    # controller: AutoscalingStatus
    FEEDBACK_LAST_RUN = "feedback.last_run"      # controller: the last feedback run
    ROLLOUT_BREAKER = "rollout.breaker"          # controller: core.rollout.breaker.Breaker


class NotificationKind(StrEnum):
    """What a webhook notification is about (SPEC §4.5); ``core.notify`` builds each kind."""

    APPROVAL_WAITING = "approval-waiting"   # a rollout plan or weight version awaits approval
    ROLLOUT_FAILED = "rollout-failed"
    ROLLED_BACK = "rolled-back"
    BREAKER_OPENED = "breaker-opened"
    CRITICAL_ALERT = "critical-alert"       # an alert of severity critical started firing


class NotificationState(StrEnum):
    """A row of the notification outbox: pending → sent, or pending → dead once its
    attempts ran out (or it grew too old to be worth sending)."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    """The enum's values in declaration order (for CHECK constraints and selectors)."""
    return tuple(member.value for member in enum)
