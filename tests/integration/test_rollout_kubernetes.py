"""One rolling update of two nodes, end to end through the Kubernetes adapter.

The rollout engine (``core.controller.rollout``) with the real store (a SQLite file)
and the real placement worker drives ``KubernetesCluster`` against the fake API
server of ``test_node_config_scenario`` (its backend, reused: two A100 nodes on
``mps-2``, two deployments with one replica on each node and a ``minAvailable: 1``
PodDisruptionBudget each, the device plugin's named configs in its ConfigMap). The
plan changes both nodes to ``mps-4`` without pre-warming (each node is full, so
there is nowhere to pre-warm): per node cordon → drain through budget-checked
evictions → label → restart the plugin → wait until it advertises 4 → uncordon →
the drained replicas are placed again. Time is real (the fake's delays are short).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.clock import SystemClock
from core.controller import PlacementConfig, PlacementWorker
from core.controller.rollout import RolloutConfig, RolloutEngine
from core.controller.rollout_actions import Ports
from core.controller.rollout_gates import Check, Report
from core.model import PlacementRequest, Priority
from core.ports import PodPhase
from core.rollout.plan import NodeChange, RolloutPlan, Strategy, Timeouts
from core.scheduling import build_scheduler
from core.settings import Settings
from core.states import RolloutState
from db import queue, rollouts, versions
from db.engine import make_engine, session_factory, upgrade
from db.rollouts import SqlRolloutStore
from db.stores import SqlPlacementStore
from tests.integration.test_node_config_scenario import (
    AFTER,
    BEFORE,
    MODELS,
    NODE,
    OTHER,
    WORKLOADS,
    Backend,
    _kubernetes,
    _owner,
    _pod,
)

SETTLE_WALL_S = 90.0  # a hang guard, not an assertion on speed


class ClusterAnswers:
    """Gates for this test: only that the cluster API answers (no metrics source here;
    the traffic and dependency gates have their own tests)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def check(self, *, plan: Any, now: float, node: str | None = None) -> Report:
        self.backend.port.nodes()
        return Report(checks=(Check("cluster-api", True, "answers", "answers"),))


@pytest.fixture()
def kube(settings: Settings) -> Iterator[Backend]:
    yield from _kubernetes(settings)


def test_a_rolling_update_of_two_nodes_runs_through_the_kubernetes_adapter(
        kube: Backend, settings: Settings, tmp_path: Path) -> None:
    adapter = kube.port
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    factory = session_factory(engine)
    clock = SystemClock()
    now = datetime.now(UTC)
    store = SqlRolloutStore(factory)
    scheduler = build_scheduler(settings, weight_version=1)
    with factory.begin() as s:
        versions.ensure_initial_weights(s, scheduler.weights, now=now)
    # The replicas run already, one of each deployment per node, and the store knows them.
    for replica, node in enumerate((NODE, OTHER)):
        for model, gb, threads in MODELS:
            adapter.bind(_pod(model=model, gb=gb, threads=threads, node=node,
                              replica=replica))
            store.record_bound(PlacementRequest(
                model_name=model, model_memory_gb=gb, priority=Priority.MEDIUM,
                latency_sla_ms=500.0, namespace=WORKLOADS,
                request_id=_owner(model, replica)), now=clock.now())
    kube.let_pods_start()
    worker = PlacementWorker(store=SqlPlacementStore(factory), cluster=adapter, clock=clock,
                             scheduler=lambda: scheduler, catalog=settings.catalog,
                             max_clients=48, worker="ctrl-1",
                             config=PlacementConfig(poll_s=0.05, bind_timeout_s=10.0,
                                                    retry_after_s=0.2))
    rollout = RolloutEngine(
        ports=Ports(store=store, cluster=adapter, nodes=adapter,
                    placement=SqlPlacementStore(factory), health=None),
        gates=ClusterAnswers(kube), clock=clock,
        config=RolloutConfig(rollback_retry_s=0.5))
    plan = RolloutPlan(strategy=Strategy.ROLLING, update_type="routine_optimization",
                       changes=tuple(NodeChange(n, BEFORE, AFTER, 1) for n in (NODE, OTHER)),
                       migrate=False, timeouts=Timeouts(drain_s=20.0, restart_s=20.0,
                                                        pods_s=30.0))
    with factory.begin() as s:
        pid = rollouts.create_plan(s, plan=plan, actor="planner", reason="pack better",
                                   now=now)
        rollouts.apply_event(s, plan_id=pid, event="approve", actor="alice",
                             reason="quiet hour", now=now, shown={"gates": "passed"})

    deadline = time.monotonic() + SETTLE_WALL_S
    state = RolloutState.APPROVED
    while time.monotonic() < deadline:
        worker.run_once()
        rollout.run_once()
        state = RolloutState(store.rollout(pid).state)
        if state in (RolloutState.SUCCEEDED, RolloutState.ROLLED_BACK, RolloutState.FAILED):
            break
        time.sleep(0.05)

    with factory() as s:
        view = rollouts.get_plan(s, pid)
        failed = [(st.label, st.details.get("error")) for st in view.steps
                  if st.status == "failed"]
        assert state is RolloutState.SUCCEEDED, failed
        assert all(st.status == "succeeded" for st in view.steps)
        requests = {q.request_id: q.status for q in queue.list_requests(s)}
    for name in (NODE, OTHER):
        node = next(n for n in adapter.nodes() if n.name == name)
        assert node.schedulable and adapter.device_plugin_config(name) == AFTER
        assert node.gpu_replicas == 4 and all(g.healthy for g in node.gpus)
    # Every replica was evicted once through the budget, placed again, and runs.
    assert requests == {_owner(m, r): "bound" for m, _, _ in MODELS for r in (0, 1)}
    running = {p.owner for p in adapter.replica_pods() if p.phase == PodPhase.RUNNING.value}
    assert running == set(requests)
    engine.dispose()
