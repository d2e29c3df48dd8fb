"""Repository functions: each takes a ``Session`` and returns plain dataclasses.

The caller owns the transaction (``with factory.begin() as s:``), so a unit
of work either lands whole or not at all. Writes that race between workers
are single conditional statements (compare-and-set), never read-then-write:

- claiming from the queue is one ``UPDATE … WHERE id IN (SELECT … LIMIT n)
  RETURNING``, with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the
  statement runs under the database's single write lock;
- the leader lease is renewed or taken over with one ``UPDATE … WHERE holder
  = me OR expired``, and created with ``INSERT … ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.model import COMPONENTS, PlacementRequest, Priority, SchedulerWeights
from core.placement import Decision
from core.ports import ClaimLost
from db.models import (
    AlertEventRow,
    AuditEventRow,
    AutoscalingDecisionRow,
    ControlFlagRow,
    DecisionRow,
    LeaderLeaseRow,
    MetricRollupRow,
    MetricSampleRow,
    PlacementRequestRow,
    WeightVersionRow,
)

PRIORITY_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class LostClaim(ClaimLost):
    """The worker no longer holds the request (its lease expired and it moved on)."""


# --------------------------------------------------------------------------- queue


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    pk: int
    request_id: str
    request: PlacementRequest
    status: str
    attempts: int
    max_attempts: int
    claimed_by: str | None
    lease_expires_at: datetime | None
    reason: str | None
    source: str
    created_at: datetime
    updated_at: datetime


def request_payload(request: PlacementRequest) -> dict[str, Any]:
    return {
        "model_name": request.model_name, "model_memory_gb": request.model_memory_gb,
        "priority": request.priority.value, "latency_sla_ms": request.latency_sla_ms,
        "expected_qps": request.expected_qps, "batch_size": request.batch_size,
        "namespace": request.namespace, "labels": dict(request.labels),
        "request_id": request.request_id,
    }


def _queued(row: Any) -> QueuedRequest:
    return QueuedRequest(
        pk=row.id, request_id=row.request_id, request=PlacementRequest.parse(row.payload),
        status=row.status, attempts=row.attempts, max_attempts=row.max_attempts,
        claimed_by=row.claimed_by, lease_expires_at=row.lease_expires_at, reason=row.reason,
        source=row.source, created_at=row.created_at, updated_at=row.updated_at,
    )


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:16]}"


def enqueue(
    s: Session, request: PlacementRequest, *, now: datetime, source: str = "ui",
    max_attempts: int = 3,
) -> QueuedRequest:
    """Add a request to the queue. Idempotent on ``request.request_id``."""
    rid = request.request_id or new_request_id()
    existing = s.scalars(select(PlacementRequestRow)
                         .where(PlacementRequestRow.request_id == rid)).first()
    if existing is not None:
        return _queued(existing)
    payload = request_payload(request)
    payload["request_id"] = rid
    row = PlacementRequestRow(
        request_id=rid, model_name=request.model_name, namespace=request.namespace,
        priority=request.priority.value, priority_rank=PRIORITY_RANK[request.priority],
        payload=payload, source=source, status="queued", attempts=0,
        max_attempts=max_attempts, available_at=now, created_at=now, updated_at=now,
    )
    s.add(row)
    s.flush()
    return _queued(row)


def enqueue_many(
    s: Session, requests: Iterable[PlacementRequest], *, now: datetime, source: str,
) -> list[QueuedRequest]:
    """Enqueue a batch inside the caller's transaction: all of it or none."""
    return [enqueue(s, r, now=now, source=source) for r in requests]


def requeue_expired(s: Session, *, now: datetime) -> int:
    """Claims whose lease ran out go back to the queue, or fail when out of attempts."""
    R = PlacementRequestRow
    last = R.attempts >= R.max_attempts
    return int(s.execute(
        update(R).where(R.status.in_(("claimed", "placing")), R.lease_expires_at <= now)
        .values(status=case((last, "failed"), else_="queued"),
                reason=case((last, "claim lease expired on the last attempt"),
                            else_="claim lease expired; requeued"),
                claimed_by=None, lease_expires_at=None, updated_at=now)).rowcount or 0)


def requeue_claims_of(s: Session, *, worker: str, now: datetime) -> int:
    """Every claim ``worker`` holds goes back to the queue (it stopped leading for good).

    Attempts already counted stay counted; a request out of attempts fails.
    """
    R = PlacementRequestRow
    last = R.attempts >= R.max_attempts
    return int(s.execute(
        update(R).where(R.status.in_(("claimed", "placing")), R.claimed_by == worker)
        .values(status=case((last, "failed"), else_="queued"),
                reason=case((last, f"{worker} stopped on the last attempt"),
                            else_=f"requeued: {worker} stopped leading"),
                claimed_by=None, lease_expires_at=None, available_at=now,
                updated_at=now)).rowcount or 0)


def claim(
    s: Session, *, worker: str, now: datetime, lease_seconds: float, limit: int = 1,
) -> list[QueuedRequest]:
    """Claim up to ``limit`` queued requests for ``worker``; each goes to exactly one worker.

    Most urgent first (priority, then age), and returned in that order.
    """
    R = PlacementRequestRow
    requeue_expired(s, now=now)
    pick = (select(R.id).where(R.status == "queued", R.available_at <= now)
            .order_by(R.priority_rank.desc(), R.id).limit(limit))
    claim_values = {"status": "claimed", "claimed_by": worker, "attempts": R.attempts + 1,
                    "lease_expires_at": now + timedelta(seconds=lease_seconds),
                    "updated_at": now}
    if s.get_bind().dialect.name == "postgresql":
        # Lock the chosen rows first, then update exactly those: a LIMIT inside the
        # UPDATE's IN (…) may be re-run per row by the planner and take more than asked.
        ids = list(s.scalars(pick.with_for_update(skip_locked=True)))
        if not ids:
            return []
        target = R.id.in_(ids)
    else:
        # SQLite runs the whole statement under its single write lock.
        target = R.id.in_(pick.scalar_subquery())
    stmt = (update(R).where(target, R.status == "queued").values(**claim_values)
            .returning(*R.__table__.c).execution_options(synchronize_session=False))
    rows = s.execute(stmt).all()
    rows.sort(key=lambda r: (-r.priority_rank, r.id))
    return [_queued(r) for r in rows]


def _owned(pk: int, worker: str) -> tuple[Any, ...]:
    R = PlacementRequestRow
    return (R.id == pk, R.claimed_by == worker, R.status.in_(("claimed", "placing")))


def mark_placing(s: Session, *, pk: int, worker: str, now: datetime,
                 lease_seconds: float | None = None) -> None:
    values: dict[str, Any] = {"status": "placing", "updated_at": now}
    if lease_seconds is not None:
        values["lease_expires_at"] = now + timedelta(seconds=lease_seconds)
    if s.execute(update(PlacementRequestRow).where(*_owned(pk, worker))
                 .values(**values)).rowcount != 1:
        raise LostClaim(f"request {pk} is no longer claimed by {worker}")


def finish(s: Session, *, pk: int, worker: str, now: datetime, bound: bool,
           reason: str | None = None) -> None:
    """Mark a claimed request bound or failed (terminal)."""
    status = "bound" if bound else "failed"
    if s.execute(update(PlacementRequestRow).where(*_owned(pk, worker))
                 .values(status=status, reason=reason, lease_expires_at=None, updated_at=now)
                 ).rowcount != 1:
        raise LostClaim(f"request {pk} is no longer claimed by {worker}")


def finish_many(s: Session, *, pks: Sequence[int], worker: str, now: datetime,
                bound: bool, reason: str | None = None) -> int:
    """``finish`` for a batch in one statement; returns how many were still held."""
    if not pks:
        return 0
    R = PlacementRequestRow
    return int(s.execute(
        update(R).where(R.id.in_(list(pks)), R.claimed_by == worker,
                        R.status.in_(("claimed", "placing")))
        .values(status="bound" if bound else "failed", reason=reason, lease_expires_at=None,
                updated_at=now)).rowcount or 0)


def release(s: Session, *, pk: int, worker: str, now: datetime, reason: str,
            retry_after: float = 0.0) -> str:
    """Give a claimed request back: requeued, or failed when attempts are exhausted."""
    R = PlacementRequestRow
    status = case((R.attempts >= R.max_attempts, "failed"), else_="queued")
    result = s.execute(update(R).where(*_owned(pk, worker)).values(
        status=status, claimed_by=None, lease_expires_at=None, reason=reason, updated_at=now,
        available_at=now + timedelta(seconds=retry_after)).returning(R.status))
    row = result.first()
    if row is None:
        raise LostClaim(f"request {pk} is no longer claimed by {worker}")
    return str(row[0])


def queue_counts(s: Session) -> dict[str, int]:
    R = PlacementRequestRow
    return {status: int(n) for status, n in
            s.execute(select(R.status, func.count()).group_by(R.status)).all()}


def list_requests(s: Session, *, statuses: Sequence[str] | None = None,
                  limit: int = 100) -> list[QueuedRequest]:
    R = PlacementRequestRow
    q = select(R).order_by(R.id.desc()).limit(limit)
    if statuses:
        q = q.where(R.status.in_(statuses))
    return [_queued(r) for r in s.scalars(q)]


def in_flight_by_deployment(s: Session) -> dict[str, int]:
    """Requests queued or being placed, per ``namespace/model`` (replicas on their way)."""
    R = PlacementRequestRow
    rows = s.execute(select(R.namespace, R.model_name, func.count())
                     .where(R.status.in_(("queued", "claimed", "placing")))
                     .group_by(R.namespace, R.model_name)).all()
    return {f"{ns}/{model}": int(n) for ns, model, n in rows}


def latest_request_for(s: Session, *, namespace: str, model: str) -> PlacementRequest | None:
    """The newest request for this deployment (a template for more of its replicas)."""
    R = PlacementRequestRow
    payload = s.scalar(select(R.payload).where(R.namespace == namespace, R.model_name == model)
                       .order_by(R.id.desc()).limit(1))
    return None if payload is None else PlacementRequest.parse(payload)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    id: int
    request_id: str
    model_name: str
    placed: bool
    node: str | None
    gpu_index: int | None
    gpu_type: str | None
    workload_class: str
    share_pct: int
    score: float | None
    summary: str
    matrix: dict[str, Any]
    weight_version: int | None
    decided_by: str
    created_at: datetime


def record_decision(
    s: Session, *, request_pk: int, decision: Decision, now: datetime, decided_by: str,
    predicted_throughput: float | None = None, max_matrix_rows: int = 50,
) -> int:
    row = DecisionRow(
        request_pk=request_pk, placed=decision.placed, node=decision.node,
        gpu_index=decision.gpu_index, gpu_type=decision.gpu_type,
        workload_class=decision.workload_class.value, share_pct=decision.share_pct,
        memory_mib=decision.memory_mib, score=decision.score, summary=decision.summary,
        matrix=decision.matrix().to_dict(max_rows=max_matrix_rows),
        weight_version=decision.weight_version, predicted_throughput=predicted_throughput,
        decided_by=decided_by, created_at=now,
    )
    s.add(row)
    s.flush()
    return row.id


def decision_history(s: Session, *, limit: int = 50,
                     request_id: str | None = None) -> list[DecisionRecord]:
    D, R = DecisionRow, PlacementRequestRow
    q = (select(D, R.request_id, R.model_name).join(R, D.request_pk == R.id)
         .order_by(D.id.desc()).limit(limit))
    if request_id is not None:
        q = q.where(R.request_id == request_id)
    out = []
    for d, rid, model in s.execute(q).all():
        out.append(DecisionRecord(
            id=d.id, request_id=rid, model_name=model, placed=d.placed, node=d.node,
            gpu_index=d.gpu_index, gpu_type=d.gpu_type, workload_class=d.workload_class,
            share_pct=d.share_pct, score=d.score, summary=d.summary, matrix=d.matrix,
            weight_version=d.weight_version, decided_by=d.decided_by, created_at=d.created_at))
    return out


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True, slots=True)
class WeightVersion:
    version: int
    weights: SchedulerWeights
    status: str
    author: str
    reason: str
    evidence: dict[str, Any]
    parent_version: int | None
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None


def _weight_version(row: WeightVersionRow) -> WeightVersion:
    return WeightVersion(
        version=row.version,
        weights=SchedulerWeights(**{c: getattr(row, c) for c in COMPONENTS}),
        status=row.status, author=row.author, reason=row.reason, evidence=row.evidence,
        parent_version=row.parent_version, created_at=row.created_at,
        decided_by=row.decided_by, decided_at=row.decided_at)


def active_weights(s: Session) -> WeightVersion | None:
    row = s.scalars(select(WeightVersionRow).where(WeightVersionRow.status == "active")
                    .order_by(WeightVersionRow.version.desc())).first()
    return None if row is None else _weight_version(row)


def _add_version(s: Session, weights: SchedulerWeights, *, status: str, author: str,
                 reason: str, evidence: Mapping[str, Any], parent: int | None,
                 now: datetime) -> WeightVersionRow:
    row = WeightVersionRow(status=status, author=author, reason=reason,
                           evidence=dict(evidence), parent_version=parent, created_at=now,
                           **weights.as_dict())
    s.add(row)
    s.flush()
    return row


def ensure_initial_weights(s: Session, weights: SchedulerWeights, *,
                           now: datetime) -> WeightVersion:
    """The active version; on an empty store, the configured defaults become version 1."""
    current = active_weights(s)
    if current is not None:
        return current
    try:
        # At most one active version (a partial unique index): when two replicas start
        # together on an empty store, the second insert fails and that replica reads
        # the winner's version instead.
        with s.begin_nested():
            row = _add_version(s, weights, status="active", author="system",
                               reason="initial weights from settings", evidence={},
                               parent=None, now=now)
    except IntegrityError:
        winner = active_weights(s)
        if winner is None:
            raise
        return winner
    return _weight_version(row)


def propose_weights(s: Session, weights: SchedulerWeights, *, author: str, reason: str,
                    evidence: Mapping[str, Any], now: datetime) -> WeightVersion:
    current = active_weights(s)
    row = _add_version(s, weights, status="proposed", author=author, reason=reason,
                       evidence=evidence, parent=None if current is None else current.version,
                       now=now)
    return _weight_version(row)


def _activate(s: Session, version: int, *, actor: str, now: datetime,
              previous_status: str) -> None:
    W = WeightVersionRow
    s.execute(update(W).where(W.status == "active", W.version != version)
              .values(status=previous_status, decided_by=actor, decided_at=now))
    s.execute(update(W).where(W.version == version)
              .values(status="active", decided_by=actor, decided_at=now))


def decide_weights(s: Session, *, version: int, approve: bool, actor: str,
                   now: datetime) -> WeightVersion:
    """Approve (it becomes active, the previous one superseded) or reject a proposal."""
    row = s.get(WeightVersionRow, version)
    if row is None:
        raise KeyError(f"no weight version {version}")
    if row.status != "proposed":
        raise ValueError(f"version {version} is {row.status}, not proposed")
    if approve:
        _activate(s, version, actor=actor, now=now, previous_status="superseded")
    else:
        row.status, row.decided_by, row.decided_at = "rejected", actor, now
    s.flush()
    s.refresh(row)
    return _weight_version(row)


def rollback_weights(s: Session, *, to_version: int, actor: str,
                     now: datetime) -> WeightVersion:
    """Make an earlier version active again; the current one is marked rolled-back."""
    row = s.get(WeightVersionRow, to_version)
    if row is None:
        raise KeyError(f"no weight version {to_version}")
    if row.status in ("proposed", "rejected"):
        raise ValueError(f"version {to_version} was never active ({row.status})")
    _activate(s, to_version, actor=actor, now=now, previous_status="rolled-back")
    s.flush()
    s.refresh(row)
    return _weight_version(row)


def list_weight_versions(s: Session) -> list[WeightVersion]:
    return [_weight_version(r) for r in
            s.scalars(select(WeightVersionRow).order_by(WeightVersionRow.version.desc()))]


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    reason: str
    details: dict[str, Any]


def record_audit(s: Session, *, actor: str, action: str, object_type: str, object_id: str,
                 reason: str, now: datetime, details: Mapping[str, Any] | None = None) -> int:
    row = AuditEventRow(at=now, actor=actor, action=action, object_type=object_type,
                        object_id=object_id, reason=reason, details=dict(details or {}))
    s.add(row)
    s.flush()
    return row.id


def list_audit(s: Session, *, limit: int = 200, actor: str | None = None,
               action: str | None = None, since: datetime | None = None) -> list[AuditEvent]:
    A = AuditEventRow
    q = select(A).order_by(A.id.desc()).limit(limit)
    if actor:
        q = q.where(A.actor == actor)
    if action:
        q = q.where(A.action == action)
    if since:
        q = q.where(A.at >= since)
    return [AuditEvent(r.id, r.at, r.actor, r.action, r.object_type, r.object_id, r.reason,
                       r.details) for r in s.scalars(q)]


# --------------------------------------------------------------------------- leader lease


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    generation: int
    acquired_at: datetime
    expires_at: datetime


def _upsert_insert(s: Session) -> Any:
    return (postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert)


def acquire_lease(s: Session, *, name: str, holder: str, now: datetime,
                  ttl_seconds: float) -> Lease | None:
    """Renew ``holder``'s lease or take over an expired one; None when another leads."""
    L = LeaderLeaseRow
    expires = now + timedelta(seconds=ttl_seconds)
    is_mine = L.holder == holder
    renewed = s.execute(
        update(L).where(L.name == name, or_(is_mine, L.expires_at <= now))
        .values(generation=case((is_mine, L.generation), else_=L.generation + 1),
                acquired_at=case((is_mine, L.acquired_at), else_=now),
                holder=holder, renewed_at=now, expires_at=expires)
        .returning(L.generation, L.acquired_at)).first()
    if renewed is None:
        created = s.execute(
            _upsert_insert(s)(L).values(name=name, holder=holder, generation=1,
                                        acquired_at=now, renewed_at=now, expires_at=expires)
            .on_conflict_do_nothing(index_elements=["name"]).returning(L.name)).first()
        if created is None:
            return None
        return Lease(name, holder, 1, now, expires)
    generation, acquired_at = renewed
    return Lease(name, holder, int(generation), acquired_at, expires)


def release_lease(s: Session, *, name: str, holder: str, now: datetime) -> bool:
    L = LeaderLeaseRow
    return s.execute(update(L).where(L.name == name, L.holder == holder, L.expires_at > now)
                     .values(expires_at=now, renewed_at=now)).rowcount == 1


def current_lease(s: Session, *, name: str, now: datetime) -> Lease | None:
    row = s.get(LeaderLeaseRow, name)
    if row is None or row.expires_at <= now:
        return None
    return Lease(row.name, row.holder, row.generation, row.acquired_at, row.expires_at)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class Sample:
    ts: float
    metric: str
    key: str
    value: float


def add_samples(s: Session, samples: Iterable[Sample]) -> int:
    rows = [{"ts": x.ts, "metric": x.metric, "key": x.key, "value": x.value} for x in samples]
    if rows:
        s.execute(insert(MetricSampleRow), rows)
    return len(rows)


def rollup(s: Session, *, before_ts: float, resolution_s: int = 3600) -> int:
    """Aggregate raw samples of whole buckets ending before ``before_ts``; idempotent."""
    M, U = MetricSampleRow, MetricRollupRow
    bucket = (func.floor(M.ts / resolution_s) * resolution_s).label("bucket")
    limit = (before_ts // resolution_s) * resolution_s
    groups = s.execute(
        select(M.metric, M.key, bucket, func.count(), func.sum(M.value), func.min(M.value),
               func.max(M.value))
        .where(M.ts < limit).group_by(M.metric, M.key, bucket)).all()
    existing = {(m, k, float(b)) for m, k, b in s.execute(
        select(U.metric, U.key, U.bucket_ts).where(U.resolution_s == resolution_s,
                                                   U.bucket_ts < limit)).all()}
    new = [{"metric": m, "key": k, "bucket_ts": float(b), "resolution_s": resolution_s,
            "count": int(n), "total": float(t), "minimum": float(lo), "maximum": float(hi)}
           for m, k, b, n, t, lo, hi in groups if (m, k, float(b)) not in existing]
    if new:
        s.execute(insert(U), new)
    return len(new)


def prune(s: Session, *, raw_before_ts: float, rollup_before_ts: float) -> tuple[int, int]:
    """Retention: drop raw samples and roll-ups older than their horizons."""
    raw = s.execute(delete(MetricSampleRow).where(MetricSampleRow.ts < raw_before_ts)).rowcount
    ups = s.execute(delete(MetricRollupRow)
                    .where(MetricRollupRow.bucket_ts < rollup_before_ts)).rowcount
    return int(raw or 0), int(ups or 0)


def series(s: Session, *, metric: str, key: str, since: float,
           until: float) -> list[tuple[float, float]]:
    """(ts, value) points: hourly means where raw samples were pruned, raw samples after."""
    M, U = MetricSampleRow, MetricRollupRow
    raw = s.execute(select(M.ts, M.value).where(M.metric == metric, M.key == key,
                                                M.ts >= since, M.ts <= until)
                    .order_by(M.ts)).all()
    first_raw = raw[0][0] if raw else until + 1
    # Only buckets that end before the first raw sample: an hour is never counted twice.
    ups = s.execute(select(U.bucket_ts, U.total / U.count).where(
        U.metric == metric, U.key == key, U.bucket_ts >= since,
        U.bucket_ts + U.resolution_s <= first_raw)
        .order_by(U.bucket_ts)).all()
    return [(float(t), float(v)) for t, v in (*ups, *raw)]


# --------------------------------------------------------------------------- autoscaling, alerts


def record_autoscaling(s: Session, *, deployment: str, action: str, replicas_before: int,
                       replicas_after: int, inputs: Mapping[str, Any], reason: str,
                       now: datetime) -> int:
    row = AutoscalingDecisionRow(deployment=deployment, action=action,
                                 replicas_before=replicas_before, replicas_after=replicas_after,
                                 inputs=dict(inputs), reason=reason, created_at=now)
    s.add(row)
    s.flush()
    return row.id


@dataclass(frozen=True, slots=True)
class AutoscalingDecision:
    id: int
    deployment: str
    action: str
    replicas_before: int
    replicas_after: int
    inputs: dict[str, Any]
    reason: str
    created_at: datetime


def autoscaling_history(s: Session, *, since: datetime | None = None,
                        deployment: str | None = None, limit: int = 500
                        ) -> list[AutoscalingDecision]:
    """Autoscaling decisions, newest first."""
    A = AutoscalingDecisionRow
    q = select(A).order_by(A.id.desc()).limit(limit)
    if since is not None:
        q = q.where(A.created_at >= since)
    if deployment is not None:
        q = q.where(A.deployment == deployment)
    return [AutoscalingDecision(r.id, r.deployment, r.action, r.replicas_before,
                                r.replicas_after, dict(r.inputs), r.reason, r.created_at)
            for r in s.scalars(q)]


def record_alert(s: Session, *, name: str, severity: str, state: str,
                 labels: Mapping[str, Any], summary: str, now: datetime) -> int:
    """Open an alert event, or close the open one of the same name and labels."""
    A = AlertEventRow
    if state == "resolved":
        wanted = dict(labels)
        open_row = next((r for r in s.scalars(
            select(A).where(A.name == name, A.state != "resolved").order_by(A.id.desc()))
            if r.labels == wanted), None)
        if open_row is None:
            return 0
        open_row.state, open_row.ended_at = "resolved", now
        s.flush()
        return open_row.id
    row = AlertEventRow(name=name, severity=severity, state=state, labels=dict(labels),
                        summary=summary, started_at=now)
    s.add(row)
    s.flush()
    return row.id


# --------------------------------------------------------------------------- control flags


@dataclass(frozen=True, slots=True)
class Flag:
    key: str
    value: dict[str, Any]
    updated_by: str
    updated_at: datetime


def set_flag(s: Session, *, key: str, value: Mapping[str, Any], actor: str,
             now: datetime) -> None:
    """Create or replace one durable switch (last writer wins)."""
    F = ControlFlagRow
    stmt = _upsert_insert(s)(F).values(key=key, value=dict(value), updated_by=actor,
                                       updated_at=now)
    s.execute(stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"value": stmt.excluded.value, "updated_by": stmt.excluded.updated_by,
              "updated_at": stmt.excluded.updated_at}))


def get_flag(s: Session, key: str) -> Flag | None:
    row = s.get(ControlFlagRow, key)
    if row is None:
        return None
    return Flag(row.key, dict(row.value), row.updated_by, row.updated_at)


# --------------------------------------------------------------------------- placements held


@dataclass(frozen=True, slots=True)
class HeldPlacement:
    """A bound request's slice: where it sits and what it holds."""

    request_id: str
    model_name: str
    node: str
    gpu_index: int
    share_pct: int
    memory_mib: int
    workload_class: str
    request: PlacementRequest


def held_placements(s: Session) -> list[HeldPlacement]:
    """The latest placed decision of every bound request (to rebuild the fleet's slices)."""
    D, R = DecisionRow, PlacementRequestRow
    latest = (select(D.request_pk, func.max(D.id).label("id"))
              .where(D.placed.is_(True)).group_by(D.request_pk).subquery())
    q = (select(R.request_id, R.model_name, D.node, D.gpu_index, D.share_pct, D.memory_mib,
                D.workload_class, R.payload)
         .join(latest, latest.c.request_pk == R.id).join(D, D.id == latest.c.id)
         .where(R.status == "bound").order_by(D.id))
    return [HeldPlacement(*row[:7], request=PlacementRequest.parse(row[7]))
            for row in s.execute(q).all()]


def mark_removed(s: Session, *, request_ids: Sequence[str], reason: str,
                 now: datetime) -> int:
    """Bound requests whose replica was taken away (scale-down): bound → removed."""
    if not request_ids:
        return 0
    R = PlacementRequestRow
    return s.execute(update(R).where(R.request_id.in_(list(request_ids)), R.status == "bound")
                     .values(status="removed", reason=reason, updated_at=now)).rowcount
