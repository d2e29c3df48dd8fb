"""Weight-version actions with their audit entries, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from core import feedback as fb
from core.errors import ValidationError
from core.model import PlacementRequest, SchedulerWeights, WorkloadClass
from core.placement import FleetSnapshot, Scheduler
from db import audit as audit_log
from db import decisions, queue, versions
from db import weights as ws
from tests.db.conftest import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INITIAL = SchedulerWeights()
NEW = SchedulerWeights(efficiency=0.30, affinity=0.25, utilization=0.20, power=0.10, mps=0.15)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def proposal() -> fb.Proposal:
    def replay(w: SchedulerWeights) -> fb.CandidateScore:
        return fb.CandidateScore(cost_per_1k=Decimal("0.020") - Decimal(str(w.mps - 0.1)) / 10,
                                 sla_attainment=0.99)

    observations = [fb.Observation(
        owner=f"r{i}", model="m", node="n", gpu_index=0, gpu_type="A100",
        workload_class=WorkloadClass.MEDIUM, share_pct=50, co_runners=0, decision=True,
        weight_version=1, served_qps=10.0, predicted_capacity_rps=20.0,
        actual_capacity_rps=18.0, predicted_latency_ms=400.0, actual_latency_ms=480.0,
        latency_pure=True, cost_per_hour=Decimal("0.93"), power_cost_per_hour=Decimal("0.02"),
        cost_per_inference=Decimal("0.0000258"), utilization_efficiency=0.55)
        for i in range(3)]
    made = fb.feedback_step(active=INITIAL, observations=observations, evaluate=replay, now=T0,
                            active_version=1)
    assert made is not None
    return made


def seed(store: Store) -> int:
    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, INITIAL, now=T0)
        return ws.record_proposal(s, proposal(), author="feedback-loop", now=at(1)).version


def statuses(store: Store) -> dict[int, str]:
    with store.factory() as s:
        return {v.version: v.status for v in versions.list_weight_versions(s)}


def audit(store: Store) -> list[audit_log.AuditEvent]:
    with store.factory() as s:
        return list(reversed(audit_log.list_audit(s)))


def test_a_recorded_proposal_keeps_its_evidence_and_is_audited(store: Store) -> None:
    version = seed(store)
    with store.factory() as s:
        stored = next(v for v in versions.list_weight_versions(s) if v.version == version)
        assert [v.version for v in ws.pending_proposals(s)] == [version]
        assert ws.last_proposal_at(s) == at(1)
    assert stored.status == "proposed" and stored.parent_version == 1
    assert stored.evidence == json.loads(json.dumps(proposal().evidence))
    assert stored.evidence["proposed"]["mps"] == pytest.approx(0.15)
    (event,) = audit(store)
    assert (event.action, event.actor, event.object_id) == ("propose-weights", "feedback-loop",
                                                            str(version))


def test_approve_activates_and_audits_in_one_go_and_a_reason_is_required(store: Store) -> None:
    version = seed(store)
    with pytest.raises(ValidationError, match="reason"), store.factory.begin() as s:
        ws.approve(s, version=version, actor="alice", reason="  ", now=at(2))
    assert statuses(store)[version] == "proposed"
    with store.factory.begin() as s:
        approved = ws.approve(s, version=version, actor="alice", reason="cheaper", now=at(3))
    assert approved.status == "active" and approved.decided_by == "alice"
    assert statuses(store) == {version: "active", 1: "superseded"}
    event = audit(store)[-1]
    assert (event.action, event.actor, event.reason) == ("approve-weights", "alice", "cheaper")
    assert event.details["previous_version"] == 1
    assert event.details["weights"]["mps"] == pytest.approx(0.15)


def test_a_second_decision_on_the_same_version_is_refused_and_nothing_changes(
        store: Store) -> None:
    version = seed(store)
    with store.factory.begin() as s:
        ws.approve(s, version=version, actor="alice", reason="ok", now=at(2))
    for act in (lambda s: ws.reject(s, version=version, actor="bob", reason="no", now=at(3)),
                lambda s: ws.approve(s, version=version, actor="bob", reason="ok", now=at(3))):
        with pytest.raises(ws.WeightConflict, match="is active"), store.factory.begin() as s:
            act(s)
    assert statuses(store) == {version: "active", 1: "superseded"}
    assert [e.action for e in audit(store)] == ["propose-weights", "approve-weights"]
    with pytest.raises(KeyError), store.factory.begin() as s:
        ws.approve(s, version=999, actor="bob", reason="ok", now=at(3))


def test_reject_and_roll_back(store: Store) -> None:
    version = seed(store)
    with store.factory.begin() as s:
        ws.reject(s, version=version, actor="bob", reason="freeze", now=at(2))
    assert statuses(store) == {version: "rejected", 1: "active"}
    # Neither a rejected nor the active version can be rolled back to.
    for target in (version, 1):
        with pytest.raises(ws.WeightConflict), store.factory.begin() as s:
            ws.roll_back(s, to_version=target, actor="bob", reason="x", now=at(3))

    with store.factory.begin() as s:
        newer = versions.propose_weights(s, NEW, author="alice", reason="by hand", evidence={},
                                     now=at(4))
        ws.approve(s, version=newer.version, actor="alice", reason="try it", now=at(5))
    with store.factory.begin() as s:
        restored = ws.roll_back(s, to_version=1, actor="carol", reason="p99 up", now=at(6))
    assert restored.status == "active" and restored.version == 1
    assert statuses(store) == {newer.version: "rolled-back", version: "rejected", 1: "active"}
    event = audit(store)[-1]
    assert (event.action, event.actor, event.object_id) == ("rollback-weights", "carol", "1")
    assert event.details["from_version"] == newer.version


def test_placed_replicas_are_the_latest_placed_decision_of_each_bound_request(
        store: Store, scheduler: Scheduler, default_snapshot: FleetSnapshot) -> None:
    def request(rid: str) -> PlacementRequest:
        return PlacementRequest.parse({"model_name": "mistral-7b", "model_memory_gb": 8,
                                       "priority": "LOW", "latency_sla_ms": 700,
                                       "namespace": "serving", "request_id": rid})

    with store.factory.begin() as s:
        versions.ensure_initial_weights(s, INITIAL, now=T0)
        for rid in ("bound-1", "queued-1"):
            queue.enqueue(s, request(rid), now=T0)
        (claimed,) = queue.claim(s, worker="w", now=T0, lease_seconds=30, limit=1)
        decision = scheduler.decide(claimed.request, default_snapshot)
        decision_id = decisions.record_decision(s, request_pk=claimed.pk, decision=decision, now=T0,
                                           decided_by="w")
        queue.finish(s, pk=claimed.pk, worker="w", now=T0, bound=True)
    with store.factory() as s:
        (replica,) = ws.placed_replicas(s)
    assert replica == fb.PlacedReplica(
        request_id="bound-1", model="mistral-7b", namespace="serving", node=decision.node or "",
        gpu_index=decision.gpu_index or 0, workload_class=WorkloadClass.MEDIUM, share_pct=50,
        weight_version=1, decision_id=decision_id, latency_sla_ms=700.0)
