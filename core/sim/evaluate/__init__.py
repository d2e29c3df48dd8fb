"""Placement quality on the digital twin: replay traffic under one placement policy.

Why: the feedback loop scores candidate scheduler weights on recent traffic,
and the placement-quality bench compares the scheduler with baseline
policies. Both need the same harness: the twin serving the traffic, replicas
that follow the load, and every new replica placed by the policy under test.

How a run goes. The fleet starts empty (slices the given nodes carry are
dropped); the starting replicas (``min_replicas`` of every deployment, and
with ``warm_start`` as many more as the scaling rule wants for the period's
average traffic — how an operator sizes deployments from history) are placed
by the policy and bound one startup delay before ``start``, so they are
Running when the measured period begins (nothing before ``start`` counts). Then, every
``control_interval_s``, the twin advances, the cost of the interval is booked
and the autoscaler acts; each replica it adds is placed by the policy over a
fresh snapshot of the twin's nodes and bound as the rendered Pod, exactly as
the controller's placement worker does.

Autoscaling is what the controller ships (what is evaluated is what ships):
by default the ``slo`` policy, ``core.autoscale_policy.SloPolicy`` — the same
class the controller's autoscaling step runs — fed the twin's telemetry,
nodes and replica pods every control interval; each replica it adds is a
placement request labelled, as the controller labels it, with the GPU type it
chose and whether it counted on a free slot of a GPU in use (the placement
filter ``AutoscalerChoice`` honours both), and the replicas it removes are the
ones it names. ``autoscaler="seed"`` runs SPEC §3.6's queue rule through
``core.autoscale`` as the controller does, and ``"target"`` the older
capacity-target rule (``ScalingRule``: ``rate / target_utilization + queue /
drain_s`` requests/s, HPA-style windows), kept for comparison.

Cost is SPEC §3.8 (corrected) integrated over time, through ``core.cost``'s
one formula: for every interval, each GPU hosting at least one replica
(Pending ones included: they hold the GPU) costs its GPU-hour price × the
interval, whole, plus the energy it drew (its energy counter's increase) ×
the electricity price; the unallocated share is idle cost, counted in the
total; a GPU hosting nothing costs nothing. So packing well and scaling in
lower the cost a policy is judged by. SLO attainment counts requests that met every
objective of their deployment (TTFT, TPOT, e2e: the twin checks each request;
a deployment without token objectives has its e2e SLA), over every request
that arrived: failed and timed-out requests are misses.

Invariants: pure (no I/O; no wall clock — decisions/s is measured only when
the caller injects a timer); the same inputs and seed give the same result;
every replica the harness binds passed the policy's filters and the twin's
own over-commit check.

Modules: ``deployments`` (what is served, SLAs, the scaling rule), ``harness``
(the twin and the replicas), ``results`` (the books and the result), ``replay``
(the entry points). Their public names are re-exported here.
"""

from core.sim.evaluate.deployments import (
    STANDARD_MODELS,
    Deployment,
    ScalingRule,
    empty_fleet,
    latency_sla_s,
    standard_deployments,
    unloaded_latency_s,
)
from core.sim.evaluate.harness import Harness, Replica
from core.sim.evaluate.replay import evaluate_policy, evaluate_weights
from core.sim.evaluate.results import Books, DeploymentResult, PolicyResult

__all__ = [
    "STANDARD_MODELS", "Books", "Deployment", "DeploymentResult", "Harness", "PolicyResult",
    "Replica", "ScalingRule", "empty_fleet", "evaluate_policy", "evaluate_weights",
    "latency_sla_s", "standard_deployments", "unloaded_latency_s",
]
