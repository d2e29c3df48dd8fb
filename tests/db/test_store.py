"""The store's behaviour, run unchanged on a SQLite temp file and on PostgreSQL.

Time is always passed in explicitly (``now=``): nothing here sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from core.model import PlacementRequest, SchedulerWeights
from core.placement import FleetSnapshot, Scheduler
from core.placement.matrix import DecisionMatrix
from core.ports import ClaimLost
from db import audit, autoscaling, decisions, flags, leases, metrics, queue, versions
from db.base import Base
from db.engine import make_engine, session_factory
from db.models import AlertEventRow, AutoscalingDecisionRow, MetricRollupRow, MetricSampleRow
from tests.db.conftest import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = 3600
BASE_TS = 472_222 * HOUR  # an epoch second on an hour boundary (2023-11-14 22:00 UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def placement(name: str = "llama-2-13b", *, priority: str = "MEDIUM", request_id: str = "",
            memory_gb: float = 26.0) -> PlacementRequest:
    return PlacementRequest.parse({
        "model_name": name, "model_memory_gb": memory_gb, "priority": priority,
        "latency_sla_ms": 200, "expected_qps": 12.5, "namespace": "serving",
        "labels": {"team": "search"}, "request_id": request_id,
    })


def enqueue(store: Store, *requests: PlacementRequest, now: datetime = T0,
            max_attempts: int = 3) -> list[queue.QueuedRequest]:
    with store.factory.begin() as s:
        return [queue.enqueue(s, r, now=now, source="test", max_attempts=max_attempts)
                for r in requests]


def claim(store: Store, *, worker: str, now: datetime = T0, lease_seconds: float = 30.0,
          limit: int = 1) -> list[queue.QueuedRequest]:
    with store.factory.begin() as s:
        return queue.claim(s, worker=worker, now=now, lease_seconds=lease_seconds, limit=limit)


def one(store: Store, request_id: str) -> queue.QueuedRequest:
    with store.factory() as s:
        found = [q for q in queue.list_requests(s, limit=10_000) if q.request_id == request_id]
    assert len(found) == 1
    return found[0]


def is_plain_dataclass(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, Base)




# --------------------------------------------------------------------------- queue


def test_enqueue_is_idempotent_on_request_id_and_returns_plain_dataclasses(store: Store) -> None:
    r = placement(request_id="req-idem-1")
    first = enqueue(store, r)[0]
    again = enqueue(store, r, now=at(60))[0]

    assert is_plain_dataclass(first)
    assert again == first
    assert first.request == r
    assert (first.status, first.attempts, first.claimed_by, first.source) == (
        "queued", 0, None, "test")
    assert first.created_at == T0 and first.created_at.tzinfo is not None
    with store.factory() as s:
        assert queue.queue_counts(s) == {"queued": 1}
        listed = queue.list_requests(s)
    assert all(is_plain_dataclass(q) for q in listed)
    assert listed == [first]


def test_a_request_without_an_id_gets_a_fresh_one(store: Store) -> None:
    a, b = enqueue(store, placement(), placement())
    assert a.request_id.startswith("req-") and b.request_id.startswith("req-")
    assert a.request_id != b.request_id
    assert a.request.request_id == a.request_id


def test_claims_come_highest_priority_first_then_oldest_first(store: Store) -> None:
    order = [("low", "LOW"), ("high-1", "HIGH"), ("medium", "MEDIUM"), ("high-2", "HIGH"),
             ("critical", "CRITICAL")]
    for i, (rid, priority) in enumerate(order):
        enqueue(store, placement(priority=priority, request_id=rid), now=at(i))

    claimed: list[str] = []
    for i in range(6):
        claimed += [q.request_id for q in claim(store, worker="w1", now=at(10 + i))]

    assert claimed == ["critical", "high-1", "high-2", "medium", "low"]


def test_a_claim_takes_at_most_limit_requests(
        store: Store) -> None:
    enqueue(store, *(placement(request_id=f"r{i}") for i in range(10)))

    sizes = [len(claim(store, worker="w1", now=at(i), limit=limit))
             for i, limit in enumerate([1, 1, 3, 1])]

    assert sizes == [1, 1, 3, 1]


def test_a_batch_claim_takes_the_most_urgent_requests(
        store: Store) -> None:
    for i, priority in enumerate(["LOW", "LOW", "CRITICAL", "MEDIUM", "HIGH", "LOW"]):
        enqueue(store, placement(priority=priority, request_id=f"r{i}"))

    batch = claim(store, worker="w1", limit=3)

    assert {q.request_id for q in batch} == {"r2", "r3", "r4"}
    assert all(q.status == "claimed" and q.claimed_by == "w1" and q.attempts == 1
               for q in batch)
    assert all(q.lease_expires_at == at(30) for q in batch)


def test_a_batch_claim_comes_back_in_priority_order(store: Store) -> None:
    for i, priority in enumerate(["LOW", "MEDIUM", "CRITICAL"]):
        enqueue(store, placement(priority=priority, request_id=f"r{i}"))

    batch = claim(store, worker="w1", limit=3)

    assert [q.request_id for q in batch] == ["r2", "r1", "r0"]


def test_a_claimed_request_is_not_claimed_again_while_its_lease_is_valid(store: Store) -> None:
    enqueue(store, placement(request_id="r1"))
    assert [q.request_id for q in claim(store, worker="w1", lease_seconds=30)] == ["r1"]
    assert claim(store, worker="w2", now=at(29.999)) == []


def test_a_claim_whose_lease_expired_returns_to_the_queue_and_counts_attempts(
        store: Store) -> None:
    enqueue(store, placement(request_id="r1"))
    claim(store, worker="w1", lease_seconds=30)

    with store.factory.begin() as s:
        assert queue.requeue_expired(s, now=at(30)) == 1
    requeued = one(store, "r1")
    assert (requeued.status, requeued.claimed_by, requeued.attempts) == ("queued", None, 1)
    assert requeued.reason is not None and "expired" in requeued.reason

    taken = claim(store, worker="w2", now=at(31))
    assert [(q.request_id, q.claimed_by, q.attempts) for q in taken] == [("r1", "w2", 2)]


def test_claim_itself_reclaims_expired_leases(store: Store) -> None:
    enqueue(store, placement(request_id="r1"))
    claim(store, worker="w1", lease_seconds=5)
    taken = claim(store, worker="w2", now=at(5))
    assert [(q.claimed_by, q.attempts) for q in taken] == [("w2", 2)]


def test_retries_are_bounded_and_the_request_fails_with_a_reason(store: Store) -> None:
    enqueue(store, placement(request_id="r1"), max_attempts=3)
    t = 0.0
    for attempt in (1, 2, 3):
        got = claim(store, worker=f"w{attempt}", now=at(t), lease_seconds=10)
        assert [q.attempts for q in got] == [attempt]
        t += 10  # the worker dies: its lease runs out

    assert claim(store, worker="w4", now=at(t)) == []
    failed = one(store, "r1")
    assert (failed.status, failed.attempts, failed.claimed_by) == ("failed", 3, None)
    assert failed.reason and "last attempt" in failed.reason
    with store.factory() as s:
        assert queue.queue_counts(s) == {"failed": 1}


def test_release_requeues_with_a_delay_until_attempts_run_out(store: Store) -> None:
    enqueue(store, placement(request_id="r1"), max_attempts=2)
    pk = claim(store, worker="w1")[0].pk
    with store.factory.begin() as s:
        assert queue.release(s, pk=pk, worker="w1", now=at(1), reason="no capacity",
                            retry_after=60) == "queued"
    assert claim(store, worker="w1", now=at(60)) == []  # not yet available
    again = claim(store, worker="w1", now=at(61))
    assert [q.attempts for q in again] == [2]
    with store.factory.begin() as s:
        assert queue.release(s, pk=pk, worker="w1", now=at(62), reason="still no capacity") \
            == "failed"
    final = one(store, "r1")
    assert (final.status, final.reason) == ("failed", "still no capacity")


def test_finish_marks_bound_or_failed_and_the_counts_follow(store: Store) -> None:
    enqueue(store, *(placement(request_id=f"r{i}") for i in range(3)))
    a, b, c = claim(store, worker="w1", limit=3)
    enqueue(store, placement(request_id="r3"))
    with store.factory.begin() as s:
        queue.mark_placing(s, pk=a.pk, worker="w1", now=at(1), lease_seconds=120)
        queue.finish(s, pk=a.pk, worker="w1", now=at(2), bound=True)
        queue.finish(s, pk=b.pk, worker="w1", now=at(2), bound=False, reason="no GPU fits")
    with store.factory() as s:
        assert queue.queue_counts(s) == {"bound": 1, "failed": 1, "claimed": 1, "queued": 1}
        failed = queue.list_requests(s, statuses=["failed"])
        active = queue.list_requests(s, statuses=["claimed", "queued"])
    assert [(q.request_id, q.reason) for q in failed] == [(b.request_id, "no GPU fits")]
    assert {q.request_id for q in active} == {c.request_id, "r3"}


def test_placing_extends_the_lease(store: Store) -> None:
    enqueue(store, placement(request_id="r1"))
    pk = claim(store, worker="w1", lease_seconds=10)[0].pk
    with store.factory.begin() as s:
        queue.mark_placing(s, pk=pk, worker="w1", now=at(5), lease_seconds=60)
    assert claim(store, worker="w2", now=at(30)) == []
    assert one(store, "r1").status == "placing"
    with store.factory.begin() as s:
        queue.finish(s, pk=pk, worker="w1", now=at(40), bound=True)
    assert one(store, "r1").status == "bound"


LOST_CLAIM_OPS = {
    "mark_placing": lambda s, pk, w: queue.mark_placing(s, pk=pk, worker=w, now=at(40)),
    "finish": lambda s, pk, w: queue.finish(s, pk=pk, worker=w, now=at(40), bound=True),
    "release": lambda s, pk, w: queue.release(s, pk=pk, worker=w, now=at(40), reason="x"),
}


@pytest.mark.parametrize("op", sorted(LOST_CLAIM_OPS))
def test_a_worker_that_lost_its_claim_can_no_longer_touch_the_request(
        store: Store, op: str) -> None:
    enqueue(store, placement(request_id="r1"))
    pk = claim(store, worker="w1", lease_seconds=10)[0].pk
    claim(store, worker="w2", now=at(20), lease_seconds=60)  # w1's lease ran out; w2 took it

    with pytest.raises(ClaimLost), store.factory.begin() as s:
        LOST_CLAIM_OPS[op](s, pk, "w1")
    with pytest.raises(ClaimLost), store.factory.begin() as s:
        LOST_CLAIM_OPS[op](s, pk, "nobody")

    held = one(store, "r1")
    assert (held.status, held.claimed_by, held.attempts) == ("claimed", "w2", 2)


def test_a_finished_request_cannot_be_finished_twice(store: Store) -> None:
    enqueue(store, placement(request_id="r1"))
    pk = claim(store, worker="w1")[0].pk
    with store.factory.begin() as s:
        queue.finish(s, pk=pk, worker="w1", now=at(1), bound=True)
    with pytest.raises(ClaimLost), store.factory.begin() as s:
        queue.finish(s, pk=pk, worker="w1", now=at(2), bound=False)
    assert one(store, "r1").status == "bound"


def test_a_transaction_that_fails_half_way_leaves_nothing_behind(store: Store) -> None:
    enqueue(store, placement(request_id="before"))

    with pytest.raises(RuntimeError, match="half-way"), store.factory.begin() as s:
        queue.enqueue_many(s, [placement(request_id=f"batch-{i}") for i in range(5)], now=T0,
                          source="upload")
        audit.record_audit(s, actor="alice", action="upload", object_type="queue",
                          object_id="batch", reason="bulk submit", now=T0)
        claimed = queue.claim(s, worker="w1", now=T0, lease_seconds=30, limit=10)
        assert len(claimed) == 6  # visible inside the transaction …
        raise RuntimeError("the upload failed half-way")

    with store.factory() as s:  # … and gone after the rollback
        assert queue.queue_counts(s) == {"queued": 1}
        assert [q.request_id for q in queue.list_requests(s)] == ["before"]
        assert audit.list_audit(s) == []
        assert one(store, "before").attempts == 0


# --------------------------------------------------------------------------- decisions


def decide_and_record(store: Store, scheduler: Scheduler, snapshot: FleetSnapshot, *,
                      request_id: str, now: datetime = T0) -> tuple[Any, int]:
    r = placement(request_id=request_id)
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, scheduler.weights, now=now)
        queued = queue.enqueue(s, r, now=now, source="test")
        decision = scheduler.decide(r, snapshot)
        decision_id = decisions.record_decision(s, request_pk=queued.pk, decision=decision,
                                           now=now, decided_by="controller-1",
                                           predicted_throughput=41.5)
    return decision, decision_id


def test_a_decision_comes_back_with_its_matrix_and_weight_version(
        store: Store, scheduler: Scheduler, default_snapshot: FleetSnapshot) -> None:
    decision, decision_id = decide_and_record(store, scheduler, default_snapshot,
                                              request_id="r1")
    assert decision.placed

    with store.factory() as s:
        history = decisions.decision_history(s)
    assert len(history) == 1
    record = history[0]
    assert is_plain_dataclass(record)
    expected_matrix = json.loads(json.dumps(decision.matrix().to_dict(
        max_rows=decisions.STORED_MATRIX_ROWS)))
    assert record.matrix == expected_matrix
    assert (record.id, record.request_id, record.model_name, record.placed) == (
        decision_id, "r1", "llama-2-13b", True)
    assert (record.node, record.gpu_index, record.gpu_type) == (
        decision.node, decision.gpu_index, decision.gpu_type)
    assert record.weight_version == 1 == record.matrix["weight_version"]
    assert record.score == pytest.approx(decision.score)
    assert record.summary == decision.summary
    assert record.created_at == T0
    rebuilt = DecisionMatrix.from_dict(record.matrix)
    chosen = [row for row in rebuilt.rows if row.chosen]
    assert [(c.node, c.gpu_index) for c in chosen] == [(decision.node, decision.gpu_index)]


def test_decision_history_is_newest_first_and_filters_by_request(
        store: Store, scheduler: Scheduler, default_snapshot: FleetSnapshot) -> None:
    for i in range(3):
        decide_and_record(store, scheduler, default_snapshot, request_id=f"r{i}", now=at(i))
    with store.factory() as s:
        assert [d.request_id for d in decisions.decision_history(s)] == ["r2", "r1", "r0"]
        assert [d.request_id for d in decisions.decision_history(s, limit=2)] == ["r2", "r1"]
        assert [d.request_id for d in decisions.decision_history(s, request_id="r1")] == ["r1"]


def test_restarting_keeps_the_history(
        store: Store, scheduler: Scheduler, default_snapshot: FleetSnapshot) -> None:
    decide_and_record(store, scheduler, default_snapshot, request_id="r1")
    with store.factory.begin() as s:
        audit.record_audit(s, actor="alice", action="submit", object_type="request",
                          object_id="r1", reason="new model", now=T0)
    with store.factory() as s:
        before = (decisions.decision_history(s), audit.list_audit(s), queue.list_requests(s),
                  versions.list_weight_versions(s))
    store.engine.dispose()  # the console stops …

    engine = make_engine(store.url)  # … and starts again on the same database
    try:
        with session_factory(engine)() as s:
            after = (decisions.decision_history(s), audit.list_audit(s), queue.list_requests(s),
                     versions.list_weight_versions(s))
    finally:
        engine.dispose()
    assert after == before
    assert len(after[0]) == 1 and after[0][0].matrix["rows"]


# --------------------------------------------------------------------------- weights

W_DEFAULT = SchedulerWeights()
W_NEW = SchedulerWeights.normalized({"efficiency": 3, "affinity": 1, "utilization": 1,
                                     "power": 1, "mps": 1})  # sevenths: not exact in binary
W_OTHER = SchedulerWeights(efficiency=0.2, affinity=0.2, utilization=0.2, power=0.2, mps=0.2)


def statuses(store: Store) -> dict[int, str]:
    with store.factory() as s:
        return {v.version: v.status for v in versions.list_weight_versions(s)}


def test_the_configured_weights_become_version_1_once(store: Store) -> None:
    with store.factory.begin() as s:
        first = versions.ensure_initial_weights(s, W_DEFAULT, now=T0)
    with store.factory.begin() as s:
        again = versions.ensure_initial_weights(s, W_OTHER, now=at(60))
    assert is_plain_dataclass(first)
    assert (first.version, first.status, first.author, first.weights) == (
        1, "active", "system", W_DEFAULT)
    assert again == first
    assert statuses(store) == {1: "active"}


def test_a_proposal_is_not_active_until_approved_and_then_supersedes_the_previous(
        store: Store) -> None:
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, W_DEFAULT, now=T0)
        proposal = versions.propose_weights(s, W_NEW, author="feedback-loop",
                                        reason="efficiency under-weighted",
                                        evidence={"window_h": 24, "gain_pct": 3.2}, now=at(1))
    assert (proposal.version, proposal.status, proposal.parent_version) == (2, "proposed", 1)
    with store.factory() as s:
        assert versions.active_weights(s).version == 1  # type: ignore[union-attr]
    assert statuses(store) == {1: "active", 2: "proposed"}

    with store.factory.begin() as s:
        approved = versions.decide_weights(s, version=2, approve=True, actor="alice", now=at(2))
    assert (approved.status, approved.decided_by, approved.decided_at) == (
        "active", "alice", at(2))
    assert statuses(store) == {1: "superseded", 2: "active"}
    with store.factory() as s:
        active = versions.active_weights(s)
    assert active is not None and active.weights == W_NEW
    assert active.evidence == {"window_h": 24, "gain_pct": 3.2}


def test_a_rejected_proposal_never_becomes_active(store: Store) -> None:
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, W_DEFAULT, now=T0)
        versions.propose_weights(s, W_NEW, author="bob", reason="try", evidence={}, now=at(1))
        rejected = versions.decide_weights(s, version=2, approve=False, actor="alice", now=at(2))
    assert (rejected.status, rejected.decided_by) == ("rejected", "alice")
    assert statuses(store) == {1: "active", 2: "rejected"}

    with pytest.raises(ValueError, match="not proposed"), store.factory.begin() as s:
        versions.decide_weights(s, version=2, approve=True, actor="mallory", now=at(3))
    with pytest.raises(ValueError, match="never active"), store.factory.begin() as s:
        versions.rollback_weights(s, to_version=2, actor="mallory", now=at(3))
    with pytest.raises(KeyError), store.factory.begin() as s:
        versions.decide_weights(s, version=99, approve=True, actor="alice", now=at(3))
    assert statuses(store) == {1: "active", 2: "rejected"}


def test_rollback_reactivates_an_earlier_version(store: Store) -> None:
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, W_DEFAULT, now=T0)
        versions.propose_weights(s, W_NEW, author="bob", reason="r", evidence={}, now=at(1))
        versions.decide_weights(s, version=2, approve=True, actor="alice", now=at(2))
    with store.factory.begin() as s:
        back = versions.rollback_weights(s, to_version=1, actor="carol", now=at(3))
    assert (back.version, back.status, back.weights) == (1, "active", W_DEFAULT)
    assert statuses(store) == {1: "active", 2: "rolled-back"}
    with store.factory() as s:
        assert versions.active_weights(s).weights == W_DEFAULT  # type: ignore[union-attr]
        assert sum(v.status == "active" for v in versions.list_weight_versions(s)) == 1




def test_two_replicas_starting_together_create_one_active_version(
        store: Store) -> None:
    if store.backend == "sqlite":
        pytest.skip("SQLite serializes writers with one database lock: the second replica "
                    "waits for the first, so there is no interleaving to test")
    first_inserted = threading.Event()
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def replica(name: str, *, wait: threading.Event | None, hold_s: float) -> None:
        try:
            with store.factory.begin() as s:
                if wait is not None:
                    assert wait.wait(10)
                v = versions.ensure_initial_weights(s, W_DEFAULT, now=T0)
                results[name] = v.version
                if wait is None:
                    first_inserted.set()
                    time.sleep(hold_s)  # keep the first insert uncommitted for a moment
        except BaseException as exc:
            errors.append(exc)

    a = threading.Thread(target=replica, args=("a",), kwargs={"wait": None, "hold_s": 0.3})
    b = threading.Thread(target=replica, args=("b",),
                         kwargs={"wait": first_inserted, "hold_s": 0.0})
    a.start()
    b.start()
    a.join(20)
    b.join(20)
    assert not errors, errors
    assert results["a"] == results["b"]
    assert list(statuses(store).values()) == ["active"]


def test_weights_round_trip_exactly(store: Store) -> None:
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, W_NEW, now=T0)
    with store.factory() as s:
        stored = versions.active_weights(s)
    assert stored is not None
    assert stored.weights == W_NEW
    assert stored.weights.as_dict() == W_NEW.as_dict()  # bit-for-bit, not approx


# --------------------------------------------------------------------------- audit


def test_audit_events_can_be_filtered_by_actor_action_and_time(store: Store) -> None:
    events = [("alice", "approve-weights", 0), ("bob", "submit", 10),
              ("alice", "submit", 20), ("carol", "rollback-weights", 30)]
    with store.factory.begin() as s:
        for actor, action, t in events:
            audit.record_audit(s, actor=actor, action=action, object_type="weights",
                              object_id="2", reason=f"{actor} {action}", now=at(t),
                              details={"shown": {"gain_pct": 3.2}})
    with store.factory() as s:
        everything = audit.list_audit(s)
        by_alice = audit.list_audit(s, actor="alice")
        submits = audit.list_audit(s, action="submit")
        recent = audit.list_audit(s, since=at(20))
        alice_submits = audit.list_audit(s, actor="alice", action="submit")
        latest = audit.list_audit(s, limit=1)
    assert all(is_plain_dataclass(e) for e in everything)
    assert [e.actor for e in everything] == ["carol", "alice", "bob", "alice"]
    assert [e.action for e in by_alice] == ["submit", "approve-weights"]
    assert [e.actor for e in submits] == ["alice", "bob"]
    assert [e.at for e in recent] == [at(30), at(20)]
    assert [(e.actor, e.action) for e in alice_submits] == [("alice", "submit")]
    assert [e.actor for e in latest] == ["carol"]
    assert everything[-1].details == {"shown": {"gain_pct": 3.2}}
    assert everything[-1].reason == "alice approve-weights"


# --------------------------------------------------------------------------- leader lease


def lease(store: Store, holder: str, t: float, ttl: float = 10.0) -> leases.Lease | None:
    with store.factory.begin() as s:
        return leases.acquire_lease(s, name="controller", holder=holder, now=at(t),
                                  ttl_seconds=ttl)


def test_the_first_holder_of_a_lease_is_told_it_leads(
        store: Store) -> None:
    assert lease(store, "a", 0) == leases.Lease("controller", "a", 1, at(0), at(10))


def test_the_leader_lease_is_exclusive_until_it_expires(store: Store) -> None:
    lease(store, "a", 0)  # what this first call returns: the test above
    with store.factory() as s:
        assert leases.current_lease(s, name="controller", now=at(0)) == leases.Lease(
            "controller", "a", 1, at(0), at(10))
    assert lease(store, "b", 5) is None

    renewed = lease(store, "a", 5)
    assert renewed == leases.Lease("controller", "a", 1, at(0), at(15))
    assert lease(store, "b", 14.999) is None

    taken = lease(store, "b", 15)  # a stopped renewing
    assert taken == leases.Lease("controller", "b", 2, at(15), at(25))
    assert lease(store, "a", 16) is None
    with store.factory() as s:
        assert leases.current_lease(s, name="controller", now=at(16)) == taken
        assert leases.current_lease(s, name="controller", now=at(25)) is None
        assert leases.current_lease(s, name="other", now=at(16)) is None


def test_a_released_lease_can_be_taken_at_once(store: Store) -> None:
    lease(store, "a", 0)
    with store.factory.begin() as s:
        assert not leases.release_lease(s, name="controller", holder="b", now=at(1))
        assert leases.release_lease(s, name="controller", holder="a", now=at(1))
        assert not leases.release_lease(s, name="controller", holder="a", now=at(1))
    with store.factory() as s:
        assert leases.current_lease(s, name="controller", now=at(1)) is None
    taken = lease(store, "b", 1)
    assert taken is not None and (taken.holder, taken.generation) == ("b", 2)


def test_leases_with_different_names_are_independent(store: Store) -> None:
    with store.factory.begin() as s:
        leases.acquire_lease(s, name="controller", holder="a", now=T0, ttl_seconds=10)
        leases.acquire_lease(s, name="feedback", holder="b", now=T0, ttl_seconds=10)
        assert leases.acquire_lease(s, name="controller", holder="b", now=at(1),
                                  ttl_seconds=10) is None
        assert leases.acquire_lease(s, name="feedback", holder="a", now=at(1),
                                  ttl_seconds=10) is None
    with store.factory() as s:
        a = leases.current_lease(s, name="controller", now=at(1))
        b = leases.current_lease(s, name="feedback", now=at(1))
    assert a is not None and b is not None
    assert (a.holder, a.generation, b.holder, b.generation) == ("a", 1, "b", 1)


# --------------------------------------------------------------------------- metrics


def hourly_samples() -> list[metrics.Sample]:
    """Two series over three hours; the third hour is still in progress."""
    values = {
        ("gpu_util", "node=h100-3/gpu=0"): {0: [10.0, 20.0, 60.0], 1: [40.0, 50.0], 2: [70.0]},
        ("gpu_util", "node=a100-7/gpu=1"): {0: [5.0], 1: [1.0, 2.0, 3.0, 4.0]},
    }
    out = []
    for (metric, key), by_hour in values.items():
        for hour, vals in by_hour.items():
            for i, v in enumerate(vals):
                out.append(metrics.Sample(ts=BASE_TS + hour * HOUR + 60.0 * (i + 1),
                                       metric=metric, key=key, value=v))
    return out


def rollups(store: Store) -> dict[tuple[str, float], tuple[int, float, float, float]]:
    U = MetricRollupRow
    with store.factory() as s:
        rows = s.execute(select(U.key, U.bucket_ts, U.count, U.total, U.minimum, U.maximum)
                         .where(U.resolution_s == HOUR)).all()
    return {(k, float(b) - BASE_TS): (n, t, lo, hi) for k, b, n, t, lo, hi in rows}


def test_samples_roll_up_into_hourly_buckets(store: Store) -> None:
    with store.factory.begin() as s:
        assert metrics.add_samples(s, hourly_samples()) == 11
        assert metrics.rollup(s, before_ts=BASE_TS + 2 * HOUR + 1800) == 4

    assert rollups(store) == {
        ("node=h100-3/gpu=0", 0.0): (3, 90.0, 10.0, 60.0),
        ("node=h100-3/gpu=0", HOUR): (2, 90.0, 40.0, 50.0),
        ("node=a100-7/gpu=1", 0.0): (1, 5.0, 5.0, 5.0),
        ("node=a100-7/gpu=1", HOUR): (4, 10.0, 1.0, 4.0),
    }  # the hour in progress (hour 2) is not rolled up yet


def test_rollup_is_idempotent(store: Store) -> None:
    with store.factory.begin() as s:
        metrics.add_samples(s, hourly_samples())
        metrics.rollup(s, before_ts=BASE_TS + 2 * HOUR)
    before = rollups(store)
    with store.factory.begin() as s:
        assert metrics.rollup(s, before_ts=BASE_TS + 2 * HOUR) == 0
        assert metrics.rollup(s, before_ts=BASE_TS + 2 * HOUR + 3599) == 0
    assert rollups(store) == before
    with store.factory.begin() as s:  # the next hour closes: only it is added
        assert metrics.rollup(s, before_ts=BASE_TS + 3 * HOUR) == 1
    assert rollups(store)[("node=h100-3/gpu=0", 2.0 * HOUR)] == (1, 70.0, 70.0, 70.0)


def raw_sample_times(store: Store) -> list[float]:
    with store.factory() as s:
        return [float(t) - BASE_TS for t in s.scalars(select(MetricSampleRow.ts)
                                                      .order_by(MetricSampleRow.ts))]


def test_prune_respects_each_horizon(store: Store) -> None:
    with store.factory.begin() as s:
        metrics.add_samples(s, hourly_samples())
        metrics.rollup(s, before_ts=BASE_TS + 2 * HOUR)
        assert metrics.prune(s, raw_before_ts=BASE_TS + HOUR, rollup_before_ts=BASE_TS) == (4, 0)
    assert min(raw_sample_times(store)) == HOUR + 60  # only hour 0's raw samples went
    assert len(raw_sample_times(store)) == 7
    assert len(rollups(store)) == 4
    with store.factory.begin() as s:
        assert metrics.prune(s, raw_before_ts=BASE_TS + HOUR,
                          rollup_before_ts=BASE_TS + HOUR) == (0, 2)
    assert set(rollups(store)) == {("node=h100-3/gpu=0", HOUR), ("node=a100-7/gpu=1", HOUR)}
    assert len(raw_sample_times(store)) == 7


def test_series_uses_rollups_where_raw_samples_were_pruned(store: Store) -> None:
    key = "node=h100-3/gpu=0"
    with store.factory.begin() as s:
        metrics.add_samples(s, hourly_samples())
        metrics.rollup(s, before_ts=BASE_TS + 2 * HOUR)
    with store.factory() as s:
        raw = metrics.series(s, metric="gpu_util", key=key, since=BASE_TS + 2 * HOUR,
                          until=BASE_TS + 3 * HOUR)
    assert raw == [(BASE_TS + 2 * HOUR + 60, 70.0)]

    with store.factory.begin() as s:
        metrics.prune(s, raw_before_ts=BASE_TS + 2 * HOUR, rollup_before_ts=0)
    with store.factory() as s:
        mixed = metrics.series(s, metric="gpu_util", key=key, since=BASE_TS,
                            until=BASE_TS + 3 * HOUR)
        other = metrics.series(s, metric="gpu_util", key="node=a100-7/gpu=1", since=BASE_TS,
                            until=BASE_TS + 3 * HOUR)
    assert mixed == [(BASE_TS, 30.0), (BASE_TS + HOUR, 45.0), (BASE_TS + 2 * HOUR + 60, 70.0)]
    assert other == [(BASE_TS, 5.0), (BASE_TS + HOUR, 2.5)]


def test_series_does_not_repeat_an_hour_whose_raw_samples_are_kept(store: Store) -> None:
    with store.factory.begin() as s:
        metrics.add_samples(s, hourly_samples())
        metrics.rollup(s, before_ts=BASE_TS + 2 * HOUR)
        metrics.prune(s, raw_before_ts=BASE_TS + HOUR, rollup_before_ts=0)
    with store.factory() as s:
        points = metrics.series(s, metric="gpu_util", key="node=h100-3/gpu=0", since=BASE_TS,
                             until=BASE_TS + 3 * HOUR)
    assert points == [(BASE_TS, 30.0), (BASE_TS + HOUR + 60, 40.0),
                      (BASE_TS + HOUR + 120, 50.0), (BASE_TS + 2 * HOUR + 60, 70.0)]


# --------------------------------------------------------------------------- alerts, autoscaling


def alert_events(store: Store) -> list[tuple[str, dict[str, Any], str, datetime | None]]:
    A = AlertEventRow
    with store.factory() as s:
        return [(r.name, r.labels, r.state, r.ended_at)
                for r in s.scalars(select(A).order_by(A.id))]


def test_an_alert_opens_and_resolves(store: Store) -> None:
    with store.factory.begin() as s:
        opened = metrics.record_alert(s, name="GpuHot", severity="warning", state="firing",
                                   labels={"node": "h100-3"}, summary="92 °C", now=T0)
        assert metrics.record_alert(s, name="GpuHot", severity="warning", state="resolved",
                                 labels={"node": "h100-3"}, summary="", now=at(60)) == opened
        assert metrics.record_alert(s, name="GpuHot", severity="warning", state="resolved",
                                 labels={"node": "h100-3"}, summary="", now=at(61)) == 0
    assert alert_events(store) == [("GpuHot", {"node": "h100-3"}, "resolved", at(60))]


def test_resolving_an_alert_closes_only_the_event_with_the_same_labels(store: Store) -> None:
    with store.factory.begin() as s:
        for node in ("h100-3", "a100-7"):
            metrics.record_alert(s, name="GpuHot", severity="warning", state="firing",
                              labels={"node": node}, summary="hot", now=T0)
        metrics.record_alert(s, name="GpuHot", severity="warning", state="resolved",
                          labels={"node": "h100-3"}, summary="", now=at(60))
    assert [(labels["node"], state) for _, labels, state, _ in alert_events(store)] == [
        ("h100-3", "resolved"), ("a100-7", "firing")]


def test_an_autoscaling_decision_is_recorded_with_its_inputs(store: Store) -> None:
    with store.factory.begin() as s:
        row_id = autoscaling.record_autoscaling(s, deployment="llama-2-13b", action="up",
                                         replicas_before=2, replicas_after=3,
                                         inputs={"p95_ms": 240.0, "sla_ms": 200},
                                         reason="p95 above SLA", now=T0)
    with store.factory() as s:
        row = s.get(AutoscalingDecisionRow, row_id)
        assert row is not None
        assert (row.action, row.replicas_before, row.replicas_after, row.inputs,
                row.created_at) == ("up", 2, 3, {"p95_ms": 240.0, "sla_ms": 200}, T0)
        assert s.scalar(select(func.count()).select_from(AutoscalingDecisionRow)) == 1


def test_a_flag_is_created_then_replaced_by_the_last_writer(store: Store) -> None:
    with store.factory.begin() as s:
        assert flags.get_flag(s, "autoscaling.paused") is None
        flags.set_flag(s, key="autoscaling.paused", value={"paused": True, "reason": "drill"},
                      actor="alice", now=T0)
    with store.factory.begin() as s:
        flags.set_flag(s, key="autoscaling.paused", value={"paused": False}, actor="bob",
                      now=at(60))
    with store.factory() as s:
        flag = flags.get_flag(s, "autoscaling.paused")
    assert flag is not None
    assert (flag.value, flag.updated_by, flag.updated_at) == ({"paused": False}, "bob", at(60))


def test_only_bound_requests_can_be_marked_removed(store: Store) -> None:
    with store.factory.begin() as s:
        for rid in ("r1", "r2"):
            queue.enqueue(s, PlacementRequest.parse({
                "model_name": "m", "model_memory_gb": 8, "priority": "LOW",
                "latency_sla_ms": 500, "request_id": rid}), now=T0)
        claimed = queue.claim(s, worker="w", now=T0, lease_seconds=30, limit=1)
        queue.finish(s, pk=claimed[0].pk, worker="w", now=T0, bound=True)
    with store.factory.begin() as s:
        assert queue.mark_removed(s, request_ids=["r1", "r2"], reason="scale-down",
                                 now=at(5)) == 1
    with store.factory() as s:
        statuses = {r.request_id: r.status for r in queue.list_requests(s)}
    assert statuses == {"r1": "removed", "r2": "queued"}
