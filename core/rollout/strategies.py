"""Strategies expand a plan into an ordered list of durable steps, and a rollback into more.

Why: a rollout must survive the controller dying at any point, so what it does
is not code paths but a list of small steps written to the store before they
run (``db.rollouts``); the controller (``core.controller.rollout``) runs the
first unfinished one, and every step is idempotent, so running it again after
a crash is safe. The strategies differ only in the list:

- **rolling**, per node: cordon → migrate (copies of its replicas Running
  elsewhere first) → drain (evictions within budgets) → select the new config →
  restart the device plugin → wait until the node advertises GPUs × replicas →
  uncordon → return (its replicas come back onto it, then the copies go);
- **canary**: the canary nodes as above, then ``analyze`` over the analysis
  window, then ``await-promotion`` (skipped by auto-promote), then the rest;
- **blue-green**: the green pool (the changed nodes) prepared as above but left
  empty, uncordoned, then ``shift`` 10 → 50 → 100 %: each returns that share of
  the moved replicas onto green and checks green's health; the copies on blue
  keep running until the last shift passed, so a rollback is instant (the green
  replicas go, blue never lost any);
- **emergency**: per node, critical pods evacuated first (a copy Running
  elsewhere, then the original deleted), the rest drained, the change applied,
  then ``validate`` (a short analysis) that rolls back automatically on failure.

A rollback restores every node the plan touched, newest first, to its
``from_config`` with the same per-node steps (each skips itself when the node
already runs ``from_config``), after undoing shifts and unneeded copies.

Invariants: pure; the same plan gives the same steps; every node the forward
steps cordon is uncordoned later in the same list, and in every rollback list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from core.rollout.plan import NodeChange, RolloutPlan, Strategy


class Action(StrEnum):
    CORDON = "cordon"
    MIGRATE = "migrate"        # copies of the node's replicas Running elsewhere
    EVACUATE = "evacuate"      # emergency: critical replicas copied, then originals deleted
    DRAIN = "drain"
    SET_CONFIG = "set-config"
    RESTART = "restart-plugin"
    WAIT_ADVERTISED = "wait-advertised"
    UNCORDON = "uncordon"
    RETURN = "return"          # the moved replicas come back onto the node
    ANALYZE = "analyze"
    AWAIT_PROMOTION = "await-promotion"
    SHIFT = "shift"            # blue-green: a share of the replicas onto green, then check
    VALIDATE = "validate"      # emergency: a short analysis of the changed nodes
    UNSHIFT = "unshift"        # rollback: green's replicas go, blue's stay
    UNMIGRATE = "unmigrate"    # rollback: copies of replicas still on their node go


# Steps that only watch (no change to the cluster).
WATCHING = frozenset({Action.ANALYZE, Action.AWAIT_PROMOTION, Action.VALIDATE})


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One durable step: what to do, on which node, with which parameters."""

    action: Action
    node: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    rollback: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "node": self.node, "params": dict(self.params),
                "rollback": self.rollback}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepSpec:
        return cls(action=Action(data["action"]), node=data.get("node"),
                   params=MappingProxyType(dict(data.get("params") or {})),
                   rollback=bool(data.get("rollback", False)))

    @property
    def label(self) -> str:
        where = f" {self.node}" if self.node else ""
        extra = f" {self.params['percent']} %" if "percent" in self.params else ""
        return f"{'rollback: ' if self.rollback else ''}{self.action.value}{where}{extra}"


def _step(action: Action, node: str | None = None, *, rollback: bool = False,
          **params: Any) -> StepSpec:
    return StepSpec(action=action, node=node, params=MappingProxyType(params),
                    rollback=rollback)


def node_steps(change: NodeChange, *, plan: RolloutPlan, to_config: str, expected_gpus: int,
               rollback: bool = False, evacuate: bool = False, come_back: bool = True,
               uncordon: bool = True) -> list[StepSpec]:
    """One node's change, cordon to return (see the module docstring)."""
    t = plan.timeouts
    node = change.node
    steps = [_step(Action.CORDON, node, rollback=rollback)]
    if rollback:
        steps.append(_step(Action.UNMIGRATE, node, rollback=True))
    if evacuate:
        steps.append(_step(Action.EVACUATE, node, rollback=rollback, timeout_s=t.pods_s))
    elif plan.migrate:
        steps.append(_step(Action.MIGRATE, node, rollback=rollback, timeout_s=t.pods_s,
                           config=to_config))
    steps += [
        _step(Action.DRAIN, node, rollback=rollback, timeout_s=t.drain_s, config=to_config),
        _step(Action.SET_CONFIG, node, rollback=rollback, config=to_config),
        _step(Action.RESTART, node, rollback=rollback, config=to_config,
              expected_gpus=expected_gpus, timeout_s=t.restart_s),
        _step(Action.WAIT_ADVERTISED, node, rollback=rollback, config=to_config,
              expected_gpus=expected_gpus, timeout_s=t.restart_s),
    ]
    if uncordon:
        steps.append(_step(Action.UNCORDON, node, rollback=rollback))
        if come_back:  # moved replicas come back; drained ones are bound again
            steps.append(_step(Action.RETURN, node, rollback=rollback, timeout_s=t.pods_s))
    return steps


def _forward(change: NodeChange, plan: RolloutPlan, **kw: Any) -> list[StepSpec]:
    return node_steps(change, plan=plan, to_config=change.to_config,
                      expected_gpus=change.expected_gpus, **kw)


def expand(plan: RolloutPlan) -> tuple[StepSpec, ...]:
    """The forward steps of ``plan``, in order."""
    steps: list[StepSpec] = []
    if plan.strategy is Strategy.ROLLING:
        for change in plan.changes:
            steps += _forward(change, plan)
    elif plan.strategy is Strategy.CANARY:
        canaries = set(plan.canary_nodes) or {plan.changes[0].node}
        first = [c for c in plan.changes if c.node in canaries]
        rest = [c for c in plan.changes if c.node not in canaries]
        for change in first:
            steps += _forward(change, plan)
        steps.append(_step(Action.ANALYZE, nodes=[c.node for c in first],
                           window_s=plan.analysis_window_s))
        if rest:
            steps.append(_step(Action.AWAIT_PROMOTION))
        for change in rest:
            steps += _forward(change, plan)
    elif plan.strategy is Strategy.BLUE_GREEN:
        for change in plan.changes:
            steps += _forward(change, plan, uncordon=False)
        for change in plan.changes:
            steps.append(_step(Action.UNCORDON, change.node))
        for percent in plan.shift_steps:
            steps.append(_step(Action.SHIFT, percent=percent, nodes=list(plan.nodes),
                               window_s=plan.validation_window_s,
                               timeout_s=plan.timeouts.pods_s))
    else:  # emergency
        for change in plan.changes:
            steps += _forward(change, plan, evacuate=True)
        steps.append(_step(Action.VALIDATE, nodes=list(plan.nodes),
                           window_s=plan.validation_window_s))
    return tuple(steps)


def rollback_steps(plan: RolloutPlan, *, touched: Sequence[str],
                   shifted: bool = False) -> tuple[StepSpec, ...]:
    """The steps that restore every node in ``touched`` (in the order they were touched;
    restored newest first), after undoing blue-green shifts when ``shifted``."""
    steps: list[StepSpec] = []
    if shifted:
        steps.append(_step(Action.UNSHIFT, rollback=True, nodes=list(plan.nodes),
                           timeout_s=plan.timeouts.pods_s))
    seen: list[str] = []
    for node in touched:
        if node not in seen:
            seen.append(node)
    for node in reversed(seen):
        change = plan.change(node)
        steps += node_steps(change, plan=plan, to_config=change.from_config,
                            expected_gpus=change.restore_gpus, rollback=True,
                            evacuate=False)
    return tuple(steps)
