"""The controller's placement step on the twin (ManualClock) with the real store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from core.clock import ManualClock
from core.controller import PlacementConfig, PlacementWorker
from core.errors import TransientError
from core.model import Node, PlacementRequest
from core.placement import Scheduler
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from db import decisions, queue, versions
from db.stores import SqlPlacementStore
from tests.db.conftest import Store

T0 = 1_800_000_000.0


def request(gb: float, priority: str, rid: str) -> PlacementRequest:
    return PlacementRequest.parse({"model_name": "model-x", "model_memory_gb": gb,
                                   "priority": priority, "latency_sla_ms": 200,
                                   "request_id": rid})


def make(store: Store, settings: Settings, scheduler: Scheduler,
         **config: float) -> tuple[PlacementWorker, Twin, ManualClock]:
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, scheduler.weights, now=datetime.fromtimestamp(T0, UTC))
    clock = ManualClock(T0)
    twin = Twin(settings, clock=clock, config=TwinConfig(startup_delay_s=20))
    worker = PlacementWorker(store=SqlPlacementStore(store.factory), cluster=twin, clock=clock,
                             scheduler=lambda: scheduler, catalog=settings.catalog,
                             max_clients=48, worker="ctrl-1",
                             config=PlacementConfig(poll_s=5, **config))  # type: ignore[arg-type]
    return worker, twin, clock


def enqueue(store: Store, *requests: PlacementRequest) -> None:
    with store.factory.begin() as s:
        queue.enqueue_many(s, requests, now=datetime.fromtimestamp(T0, UTC), source="test")


def test_a_request_is_bound_once_its_pod_runs(store: Store, settings: Settings,
                                              scheduler: Scheduler) -> None:
    worker, twin, clock = make(store, settings, scheduler)
    enqueue(store, request(40, "HIGH", "r-big"))
    (outcome,) = worker.run_once()
    assert (outcome.status, outcome.node, outcome.binds_tried) == ("bound", "h100-3", 1)
    assert clock.now() >= T0 + 20  # it waited for the start-up delay, on the manual clock
    pods = {p.owner: p for p in twin.pods()}
    assert pods["r-big"].phase == "Running" and pods["r-big"].node == "h100-3"
    with store.factory() as s:
        assert queue.queue_counts(s) == {"bound": 1}
        (d,) = decisions.decision_history(s)
    assert d.placed and d.node == "h100-3" and d.weight_version == 1


class FlakyNode:
    """The twin as the cluster, except that one node refuses binds or never starts pods."""

    def __init__(self, twin: Twin, *, node: str, mode: str) -> None:
        self.twin, self.node, self.mode = twin, node, mode
        self.deleted: list[str] = []

    def nodes(self) -> tuple[Node, ...]:
        return self.twin.nodes()

    def _on_bad_node(self, pod: Mapping[str, Any]) -> bool:
        return pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] == self.node

    def bind(self, pod: Mapping[str, Any]) -> None:
        if self._on_bad_node(pod) and self.mode == "refuse":
            raise TransientError("connection reset by peer")
        self.twin.bind(pod)

    def pod_phase(self, namespace: str, name: str) -> str:
        pod = next(p for p in self.twin.pods() if p.name == name)
        if pod.node == self.node and self.mode == "stuck":
            return "Pending"
        return self.twin.pod_phase(namespace, name)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.twin.delete_pod(namespace, name)

    def set_schedulable(self, node: str, schedulable: bool) -> None:
        self.twin.set_schedulable(node, schedulable)


@pytest.mark.parametrize("mode", ["refuse", "stuck"])
def test_a_failed_bind_releases_the_slice_and_tries_the_next_best_gpu(
        store: Store, settings: Settings, scheduler: Scheduler, mode: str) -> None:
    worker, twin, clock = make(store, settings, scheduler, bind_timeout_s=60)
    # The best GPU for a 40 GB HIGH request is the empty H100 on h100-3.
    flaky = FlakyNode(twin, node="h100-3", mode=mode)
    worker.cluster = flaky
    enqueue(store, request(40, "HIGH", "r-big"))
    (outcome,) = worker.run_once()
    assert outcome.status == "bound" and outcome.node not in (None, "h100-3")
    assert outcome.binds_tried == 2
    with store.factory() as s:
        history = decisions.decision_history(s)
    assert [d.node for d in reversed(history)] == ["h100-3", outcome.node]
    excluded = [r for r in history[0].matrix["rows"] if r["filter"] == "NotTriedBefore"]
    assert [r["node"] for r in excluded] == ["h100-3"]
    if mode == "stuck":
        # It waited the whole bind timeout, then deleted the stuck pod.
        assert clock.now() >= T0 + 60 and len(flaky.deleted) == 1
    assert not [p for p in twin.pods() if p.node == "h100-3" and p.owner == "r-big"
                and p.phase in ("Pending", "Running")]


def test_a_request_that_fits_nowhere_goes_back_with_the_reason_then_fails(
        store: Store, settings: Settings, scheduler: Scheduler) -> None:
    worker, _, clock = make(store, settings, scheduler, retry_after_s=0)
    enqueue(store, request(79.5, "LOW", "r-huge"), request(79.0, "LOW", "r-also-huge"))
    outcomes = {o.request_id: o for o in worker.run_once()}
    # One of the two takes the only empty H100; the other fits nowhere and is requeued.
    statuses = sorted(o.status for o in outcomes.values())
    assert statuses == ["bound", "queued"]
    loser = next(o for o in outcomes.values() if o.status == "queued")
    assert loser.reason.startswith("0/12 nodes fit")
    for _ in range(2):  # attempts are bounded (3 by default)
        clock.advance(1)
        (again,) = worker.run_once()
    assert again.status == "failed"
    with store.factory() as s:
        assert queue.queue_counts(s) == {"bound": 1, "failed": 1}


def test_a_batch_waits_for_its_pods_together_and_heartbeats_while_waiting(
        store: Store, settings: Settings, scheduler: Scheduler) -> None:
    worker, twin, clock = make(store, settings, scheduler)
    enqueue(store, request(2, "LOW", "r-a"), request(2, "LOW", "r-b"), request(3, "LOW", "r-c"))
    beats: list[float] = []
    outcomes = worker.run_once(heartbeat=lambda: beats.append(clock.now()))
    assert [o.status for o in outcomes] == ["bound", "bound", "bound"]
    # Three pods with a 20 s start-up were waited for together, not one after another.
    assert T0 + 20 <= clock.now() < T0 + 30
    assert beats and all(T0 <= b < T0 + 30 for b in beats)
    running = {p.owner for p in twin.pods() if p.phase == "Running"}
    assert {"r-a", "r-b", "r-c"} <= running


class _DownCluster:
    """A cluster whose API does not answer."""

    def nodes(self) -> tuple[Node, ...]:
        raise TransientError("connection refused")


def test_an_unreachable_cluster_gives_every_claim_back_at_once_without_an_attempt(
        store: Store, settings: Settings, scheduler: Scheduler) -> None:
    worker, _, _ = make(store, settings, scheduler)
    worker.cluster = _DownCluster()  # type: ignore[assignment]
    enqueue(store, request(8, "LOW", "r-a"), request(8, "LOW", "r-b"))
    outcomes = worker.run_once()
    assert [o.status for o in outcomes] == ["queued", "queued"]
    assert all("the cluster did not answer" in o.reason for o in outcomes)
    with store.factory() as s:
        rows = {q.request_id: q for q in queue.list_requests(s)}
    # Requeued now (not after the 120 s claim lease), and the attempt is not spent.
    assert {r: (q.status, q.attempts) for r, q in rows.items()} == {
        "r-a": ("queued", 0), "r-b": ("queued", 0)}
