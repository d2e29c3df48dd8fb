"""Ports of the rollout engine (``core.controller.rollout``), beside ``core.ports``.

``db.rollouts.SqlRolloutStore`` implements the store, ``core.rollout.gates`` (through
``core.controller.rollout_gates``) the gates, ``core.sim.health`` and the metrics
adapters the health source. ``core.ports`` re-exports every name, so steps import them
from there like every other port. Invariants as for ``core.ports``: values crossing are
frozen dataclasses or plain mappings; every store call is one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import PermanentError
from core.model import PlacementRequest

__all__ = ["ActiveRollout", "GateReport", "HealthSource", "RolloutConflict", "RolloutGates",
           "RolloutStepRecord", "RolloutStore"]


class RolloutConflict(PermanentError):
    """The plan is no longer in the state the transition expected (someone acted first)."""


@dataclass(frozen=True, slots=True)
class RolloutStepRecord:
    """One durable step as stored: ``spec`` is ``core.rollout.strategies.StepSpec``,
    ``status`` a ``core.states.StepState`` value."""

    seq: int
    spec: Any
    status: str
    details: Mapping[str, Any]
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class ActiveRollout:
    """A plan the controller has work on: its state (``RolloutState`` value), the plan
    (``core.rollout.plan.RolloutPlan``) and its steps in order."""

    plan_id: int
    state: str
    plan: Any
    steps: tuple[RolloutStepRecord, ...]


class GateReport(Protocol):
    """What the controller reads of a gate evaluation (``core.rollout.gates``)."""

    @property
    def passed(self) -> bool: ...

    @property
    def failed(self) -> tuple[str, ...]: ...

    def to_json(self) -> Mapping[str, Any]: ...


class RolloutGates(Protocol):
    def check(self, *, plan: Any, now: float, node: str | None = None) -> GateReport:
        """Every gate of ``plan``'s update type now (before it starts, or before ``node``);
        a dependency that does not answer fails its gate (closed), never passes it."""
        ...


class HealthSource(Protocol):
    def node_health(self, nodes: Sequence[str]) -> Mapping[str, Any]:
        """Per node, ``core.rollout.analysis.Health`` (QPS, error rate, p99) now;
        ``TransientError`` when the metrics source does not answer."""
        ...


class RolloutStore(Protocol):
    """What the rollout step reads and writes; each call is one transaction."""

    def active_rollouts(self) -> Sequence[ActiveRollout]:
        """Plans approved, running, analyzing or rolling back, oldest first."""
        ...

    def rollout(self, plan_id: int) -> ActiveRollout: ...

    def step_started(self, *, plan_id: int, seq: int, details: Mapping[str, Any],
                     now: float) -> None:
        """The step is RUNNING with ``details`` (written before it acts)."""
        ...

    def step_progress(self, *, plan_id: int, seq: int, details: Mapping[str, Any]) -> None: ...

    def step_finished(self, *, plan_id: int, seq: int, status: str,
                      details: Mapping[str, Any], now: float) -> None:
        """The step SUCCEEDED, FAILED or was SKIPPED (written after it acted)."""
        ...

    def add_rollback_steps(self, *, plan_id: int, specs: Sequence[Any], now: float) -> bool:
        """Append the rollback steps (once: False when they exist) and mark the forward
        steps never started SKIPPED, in one transaction."""
        ...

    def transition(self, *, plan_id: int, expected: str, event: str, actor: str,
                   reason: str, now: float, details: Mapping[str, Any] | None = None,
                   breaker: Mapping[str, Any] | None = None) -> str:
        """Apply ``event`` to a plan in state ``expected`` (``RolloutConflict`` when it
        moved), with its audit entry and the new breaker value, in one transaction."""
        ...

    def breaker(self) -> Mapping[str, Any] | None:
        """``core.rollout.breaker.Breaker.to_json()`` as stored (None: never written)."""
        ...

    def record_postponement(self, *, plan_id: int, gates: Mapping[str, Any], reason: str,
                            now: float) -> None: ...

    # --- the replicas a rollout moves (the placement queue) -------------------------------
    def requests(self, request_ids: Sequence[str]) -> Mapping[str, tuple[str, PlacementRequest]]:
        """``request_id`` → (its ``RequestState`` value, the request), for those stored."""
        ...

    def enqueue_requests(self, requests: Sequence[PlacementRequest], *, now: float) -> None:
        """Queue copies (idempotent on ``request_id``)."""
        ...

    def record_bound(self, request: PlacementRequest, *, now: float) -> None:
        """A replica the rollout bound itself (onto a given node): stored as bound."""
        ...

    def retire_requests(self, request_ids: Sequence[str], *, reason: str, now: float) -> int:
        """Bound or queued requests whose replica is gone for good → removed (reservations
        released)."""
        ...

    def requeue_requests(self, request_ids: Sequence[str], *, reason: str, now: float) -> int:
        """Bound requests whose pod was evicted (or failed ones to try again) → queued
        again, attempts reset, reservations released."""
        ...
