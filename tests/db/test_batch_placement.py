"""A placement pass's writes in batches (``db.stores.SqlPlacementStore`` as a
``core.ports.BatchPlacementStore``) keep the guarantees of the single calls: a request
is claimed by one placer only, a GPU is never over-committed (the items of one batch
count against each other and against what other placers hold), an item that conflicts
leaves the rest of its batch reserved, and a batch finish reports the requests lost."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from core.clock import ManualClock
from core.controller import PlacementConfig, PlacementStep, PlacementWorker
from core.controller.metrics import ControllerMetrics
from core.model import PlacementRequest
from core.placement.framework import STORED_MATRIX_ROWS
from core.ports import BatchPlacementStore, GpuCapacity, HeldSlice, SliceReservation
from core.scheduling import build_scheduler
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from core.states import PlacementStatus, RequestState
from db import queue, reservations, versions
from db.models import DecisionRow, GpuReservationRow
from db.stores import SqlPlacementStore
from tests.db.conftest import Store

T0 = 1_767_225_600.0
AT = datetime.fromtimestamp(T0, UTC)
CAP = GpuCapacity(memory_mib=40960, replicas=4)


def request(i: int, *, priority: str = "LOW") -> PlacementRequest:
    return PlacementRequest.parse({"model_name": f"m-{i}", "model_memory_gb": 1.5,
                                   "priority": priority, "latency_sla_ms": 500,
                                   "request_id": f"r{i:04d}"})


def slice_on(owner: str, gpu: int, pct: int = 25, mib: int = 2048,
             observed: tuple[HeldSlice, ...] = ()) -> SliceReservation:
    return SliceReservation(owner=owner, node="a100-0", gpu_index=gpu, thread_pct=pct,
                            memory_mib=mib, capacity=CAP, observed=observed)


def held(store: Store) -> dict[tuple[str, int], list[tuple[str, int, int]]]:
    with store.factory() as s:
        rows = s.execute(select(GpuReservationRow.node, GpuReservationRow.gpu_index,
                                GpuReservationRow.owner, GpuReservationRow.thread_pct,
                                GpuReservationRow.memory_mib)).all()
    out: dict[tuple[str, int], list[tuple[str, int, int]]] = defaultdict(list)
    for node, gpu, owner, pct, mib in rows:
        out[(node, gpu)].append((owner, pct, mib))
    return out


def test_the_store_offers_the_batch_protocol(store: Store) -> None:
    assert isinstance(SqlPlacementStore(store.factory), BatchPlacementStore)


def test_slices_of_one_batch_count_against_each_other(store: Store) -> None:
    batch = [slice_on("a", 0, 50), slice_on("b", 0, 50), slice_on("c", 0, 25),
             slice_on("d", 1, 25)]
    got = SqlPlacementStore(store.factory).reserve_many(
        reservations=batch, observed_at=T0, worker="w", now=T0)
    assert got[:2] == [None, None] and got[3] is None
    assert got[2] is not None and "threads already held" in got[2]
    assert sorted(o for o, _, _ in held(store)[("a100-0", 0)]) == ["a", "b"]
    assert [o for o, _, _ in held(store)[("a100-0", 1)]] == ["d"]


def test_a_batch_that_partly_conflicts_with_another_placer_keeps_the_rest(store: Store
                                                                          ) -> None:
    with store.factory.begin() as s:
        reservations.reserve(s, owner="other", node="a100-0", gpu_index=0, thread_pct=75,
                             memory_mib=1000, capacity=CAP, observed=(), observed_at=AT,
                             worker="placer-2", now=AT)
    batch = [slice_on("x", 0, 50), slice_on("y", 1, 50), slice_on("z", 0, 25)]
    got = SqlPlacementStore(store.factory).reserve_many(
        reservations=batch, observed_at=T0, worker="placer-1", now=T0)
    assert got[0] is not None and "another placer took it first" in got[0]
    assert got[1:] == [None, None]  # z still fits beside "other" once x was refused
    assert sorted(o for o, _, _ in held(store)[("a100-0", 0)]) == ["other", "z"]
    assert [o for o, _, _ in held(store)[("a100-0", 1)]] == ["y"]


def test_memory_replicas_and_a_moved_slice_in_one_batch(store: Store) -> None:
    batch = [slice_on("a", 0, 10, 30000), slice_on("b", 0, 10, 20000),  # memory
             *(slice_on(f"r{i}", 1, 10, 10) for i in range(5)),          # 4 replicas
             slice_on("a", 2, 10, 10)]                                    # "a" moves
    got = SqlPlacementStore(store.factory).reserve_many(
        reservations=batch, observed_at=T0, worker="w", now=T0)
    assert got[0] is None and "MiB already held" in str(got[1])
    assert got[2:6] == [None] * 4 and "advertised replicas" in str(got[6])
    assert got[7] is None
    gpus = held(store)
    assert ("a100-0", 0) not in gpus  # "a" moved to GPU 2; "b" never fitted
    assert [o for o, _, _ in gpus[("a100-0", 2)]] == ["a"]


def test_two_placers_reserving_batches_at_once_never_over_commit(store: Store) -> None:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def place(worker: str) -> None:
        store_ = SqlPlacementStore(store.factory)
        try:
            barrier.wait(timeout=30)
            for round_ in range(4):
                store_.reserve_many(
                    reservations=[slice_on(f"{worker}-{round_}-{g}-{k}", g)
                                  for g in (3, 2, 1, 0) for k in range(2)],
                    observed_at=T0, worker=worker, now=T0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=place, args=(f"p{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    gpus = held(store)
    assert set(gpus) == {("a100-0", g) for g in range(4)}
    for gpu, slices in gpus.items():
        assert len(slices) == 4 and sum(p for _, p, _ in slices) == 100, (gpu, slices)


def test_two_placers_claiming_batches_each_claim_a_request_once(store: Store) -> None:
    with store.factory.begin() as s:
        queue.enqueue_many(s, [request(i, priority=("LOW", "HIGH", "CRITICAL")[i % 3])
                               for i in range(120)], now=AT, source="test")
    claimed: dict[str, list[str]] = {"p0": [], "p1": []}
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def claim(worker: str) -> None:
        store_ = SqlPlacementStore(store.factory)
        try:
            barrier.wait(timeout=30)
            while items := store_.claim_placing(worker=worker, now=T0, lease_seconds=60,
                                                limit=7):
                claimed[worker] += [i.request_id for i in items]
                assert all(i.status == RequestState.PLACING for i in items)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    both = claimed["p0"] + claimed["p1"]
    assert len(both) == len(set(both)) == 120
    with store.factory() as s:
        assert queue.queue_counts(s) == {RequestState.PLACING: 120}


def test_a_batch_claim_takes_the_most_urgent_then_the_oldest(store: Store) -> None:
    with store.factory.begin() as s:
        queue.enqueue_many(s, [request(0), request(1, priority="HIGH"), request(2),
                               request(3, priority="CRITICAL"), request(4, priority="HIGH")],
                           now=AT, source="test")
    store_ = SqlPlacementStore(store.factory)
    first = store_.claim_placing(worker="w", now=T0, lease_seconds=60, limit=3)
    assert [i.request_id for i in first] == ["r0003", "r0001", "r0004"]
    rest = store_.claim_placing(worker="w", now=T0, lease_seconds=60, limit=3)
    assert [i.request_id for i in rest] == ["r0000", "r0002"]


def test_a_batch_finish_reports_the_requests_another_worker_holds(store: Store) -> None:
    with store.factory.begin() as s:
        queue.enqueue_many(s, [request(i) for i in range(3)], now=AT, source="test")
    store_ = SqlPlacementStore(store.factory)
    items = store_.claim_placing(worker="w1", now=T0, lease_seconds=60, limit=3)
    with store.factory.begin() as s:  # w1 stopped leading: its claims went back
        queue.requeue_claims_of(s, worker="w1", now=AT)
    again = store_.claim_placing(worker="w2", now=T0, lease_seconds=60, limit=1)
    pks = [i.pk for i in items]
    assert store_.finish_many(pks=pks, worker="w1", now=T0, bound=True) == set()
    assert store_.finish_many(pks=pks, worker="w2", now=T0, bound=True) == {again[0].pk}


def test_a_pass_of_full_batches_says_there_is_more_and_records_every_decision(
        store: Store, settings: Settings) -> None:
    twin = Twin(settings, clock=ManualClock(T0), config=TwinConfig(startup_delay_s=0))
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights, now=AT)
        queue.enqueue_many(s, [request(i) for i in range(10)], now=AT, source="test")
    worker = PlacementWorker(
        store=SqlPlacementStore(store.factory), cluster=twin, clock=twin.clock,
        scheduler=lambda: build_scheduler(settings, weight_version=1),
        catalog=settings.catalog, max_clients=settings.placement.max_mps_clients_per_gpu,
        worker="w", config=PlacementConfig(claim_batch=4, bind_timeout_s=0, pipeline_chunk=3,
                                           snapshot_max_age_s=60))
    step = PlacementStep(worker, metrics=ControllerMetrics())
    more = []
    for _ in range(3):
        step.run(now=T0, leading=True)
        more.append(step.more_work)
    assert more == [True, True, False]
    with store.factory() as s:
        assert queue.queue_counts(s) == {RequestState.BOUND: 10}
        matrices = list(s.scalars(select(DecisionRow.matrix)))
    assert len(matrices) == 10 and all(m["rows"][0]["chosen"] for m in matrices)


class _ExplainedStore(SqlPlacementStore):
    """Notes, for each decision handed to the recording call, whether its stored matrix
    (the JSON text) was built before, on the deciding thread, or is left to the recording
    thread."""

    def __init__(self, factory: Any) -> None:
        super().__init__(factory)
        self.built_before: list[bool] = []

    def record_decisions(self, **kwargs: Any) -> list[int]:
        self.built_before += ["_matrix_json" in d.__dict__ for _, d in kwargs["decisions"]]
        return super().record_decisions(**kwargs)


def test_decisions_reach_the_store_with_their_stored_matrix_built_by_the_decider(
        store: Store, settings: Settings) -> None:
    twin = Twin(settings, clock=ManualClock(T0), config=TwinConfig(startup_delay_s=0))
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, settings.placement.weights, now=AT)
        queue.enqueue_many(s, [request(i) for i in range(7)], now=AT, source="test")
    recording = _ExplainedStore(store.factory)
    worker = PlacementWorker(
        store=recording, cluster=twin, clock=twin.clock,
        scheduler=lambda: build_scheduler(settings, weight_version=1),
        catalog=settings.catalog, max_clients=settings.placement.max_mps_clients_per_gpu,
        worker="w", config=PlacementConfig(claim_batch=7, bind_timeout_s=0, pipeline_chunk=3))
    outcomes = worker.run_once()
    assert [o.status for o in outcomes] == [PlacementStatus.BOUND] * 7
    assert recording.built_before == [True] * 7
    with store.factory() as s:
        matrices = list(s.scalars(select(DecisionRow.matrix)))
    assert len(matrices) == 7
    assert all(len(m["rows"]) <= STORED_MATRIX_ROWS and m["rows"][0]["chosen"]
               for m in matrices)
