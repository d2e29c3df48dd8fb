"""The durable placement queue: enqueue, claim once, finish, release, remove.

Each write that races between workers is one conditional statement
(compare-and-set), never an unguarded read-then-write: claiming picks ids rank
by rank from the claim-order index, with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (on SQLite the transaction already holds the database's single write
lock), then one ``UPDATE … WHERE id IN (…) AND status = 'queued' RETURNING``;
finishing
or releasing requires the caller to still hold the claim, else ``ClaimLost``.
The caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from core.model import PlacementRequest, Priority
from core.ports import ClaimLost
from core.states import HELD_STATES, IN_FLIGHT_STATES, RequestState
from db.models import (
    GpuReservationRow,
    PlacementRequestRow,
)

PRIORITY_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}
_RANKS_MOST_URGENT_FIRST = sorted(set(PRIORITY_RANK.values()), reverse=True)



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
        payload=payload, source=source, status=RequestState.QUEUED, attempts=0,
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
        update(R).where(R.status.in_(HELD_STATES), R.lease_expires_at <= now)
        .values(status=case((last, RequestState.FAILED), else_=RequestState.QUEUED),
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
        update(R).where(R.status.in_(HELD_STATES), R.claimed_by == worker)
        .values(status=case((last, RequestState.FAILED), else_=RequestState.QUEUED),
                reason=case((last, f"{worker} stopped on the last attempt"),
                            else_=f"requeued: {worker} stopped leading"),
                claimed_by=None, lease_expires_at=None, available_at=now,
                updated_at=now)).rowcount or 0)


def claim(
    s: Session, *, worker: str, now: datetime, lease_seconds: float, limit: int = 1,
    placing: bool = False,
) -> list[QueuedRequest]:
    """Claim up to ``limit`` queued requests for ``worker``; each goes to exactly one worker.

    Most urgent first (priority, then age), and returned in that order. ``placing``: the
    claimed requests go straight to ``placing`` (a placer that starts on them at once
    saves the separate ``mark_placing`` write per request).
    """
    R = PlacementRequestRow
    # A write first: on SQLite the transaction holds the database's write lock from here
    # on, so the picks below and the update are one atomic step.
    requeue_expired(s, now=now)
    postgres = s.get_bind().dialect.name == "postgresql"
    # Rank by rank from the most urgent, each oldest first: one range of the claim-order
    # index (status, priority_rank, id) per rank, instead of sorting every queued row.
    ids: list[int] = []
    for rank in _RANKS_MOST_URGENT_FIRST:
        pick = (select(R.id).where(R.status == RequestState.QUEUED, R.priority_rank == rank,
                                   R.available_at <= now)
                .order_by(R.id).limit(limit - len(ids)))
        if postgres:
            # Lock the chosen rows first, then update exactly those; rows another worker
            # is claiming right now are skipped, not waited for.
            pick = pick.with_for_update(skip_locked=True)
        ids.extend(s.scalars(pick))
        if len(ids) >= limit:
            break
    if not ids:
        return []
    claim_values = {"status": RequestState.PLACING if placing else RequestState.CLAIMED,
                    "claimed_by": worker,
                    "attempts": R.attempts + 1,
                    "lease_expires_at": now + timedelta(seconds=lease_seconds),
                    "updated_at": now}
    stmt = (update(R).where(R.id.in_(ids), R.status == RequestState.QUEUED)
            .values(**claim_values)
            .returning(*R.__table__.c).execution_options(synchronize_session=False))
    rows = s.execute(stmt).all()
    rows.sort(key=lambda r: (-r.priority_rank, r.id))
    return [_queued(r) for r in rows]


def _owned(pk: int, worker: str) -> tuple[Any, ...]:
    R = PlacementRequestRow
    return (R.id == pk, R.claimed_by == worker, R.status.in_(HELD_STATES))


def mark_placing(s: Session, *, pk: int, worker: str, now: datetime,
                 lease_seconds: float | None = None) -> None:
    values: dict[str, Any] = {"status": RequestState.PLACING, "updated_at": now}
    if lease_seconds is not None:
        values["lease_expires_at"] = now + timedelta(seconds=lease_seconds)
    if s.execute(update(PlacementRequestRow).where(*_owned(pk, worker))
                 .values(**values)).rowcount != 1:
        raise ClaimLost(f"request {pk} is no longer claimed by {worker}")


def finish(s: Session, *, pk: int, worker: str, now: datetime, bound: bool,
           reason: str | None = None) -> None:
    """Mark a claimed request bound or failed (terminal)."""
    status = RequestState.BOUND if bound else RequestState.FAILED
    if s.execute(update(PlacementRequestRow).where(*_owned(pk, worker))
                 .values(status=status, reason=reason, lease_expires_at=None, updated_at=now)
                 ).rowcount != 1:
        raise ClaimLost(f"request {pk} is no longer claimed by {worker}")


def finish_many(s: Session, *, pks: Sequence[int], worker: str, now: datetime,
                bound: bool, reason: str | None = None) -> int:
    """``finish`` for a batch in one statement; returns how many were still held."""
    if not pks:
        return 0
    R = PlacementRequestRow
    return int(s.execute(
        update(R).where(R.id.in_(list(pks)), R.claimed_by == worker,
                        R.status.in_(HELD_STATES))
        .values(status=RequestState.BOUND if bound else RequestState.FAILED, reason=reason,
                lease_expires_at=None,
                updated_at=now)).rowcount or 0)


def finish_held(s: Session, *, pks: Sequence[int], worker: str, now: datetime,
                bound: bool, reason: str | None = None) -> set[int]:
    """``finish`` for a batch in one statement; the pks that ``worker`` still held (and
    are now finished). A pk missing from the result was lost to another worker."""
    if not pks:
        return set()
    R = PlacementRequestRow
    rows = s.execute(
        update(R).where(R.id.in_(list(pks)), R.claimed_by == worker,
                        R.status.in_(HELD_STATES))
        .values(status=RequestState.BOUND if bound else RequestState.FAILED, reason=reason,
                lease_expires_at=None, updated_at=now)
        .returning(R.id).execution_options(synchronize_session=False)).all()
    return {int(r[0]) for r in rows}


def release(s: Session, *, pk: int, worker: str, now: datetime, reason: str,
            retry_after: float = 0.0, refund: bool = False) -> str:
    """Give a claimed request back: requeued, or failed when attempts are exhausted.

    ``refund``: the attempt was never made (the cluster could not even be read), so it
    does not count against the request's attempts and the request is requeued."""
    R = PlacementRequestRow
    if refund:
        values: dict[str, Any] = {"status": RequestState.QUEUED,
                                  "attempts": case((R.attempts > 0, R.attempts - 1), else_=0)}
    else:
        values = {"status": case((R.attempts >= R.max_attempts, RequestState.FAILED),
                                 else_=RequestState.QUEUED)}
    result = s.execute(update(R).where(*_owned(pk, worker)).values(
        **values, claimed_by=None, lease_expires_at=None, reason=reason, updated_at=now,
        available_at=now + timedelta(seconds=retry_after)).returning(R.status))
    row = result.first()
    if row is None:
        raise ClaimLost(f"request {pk} is no longer claimed by {worker}")
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
                     .where(R.status.in_(IN_FLIGHT_STATES))
                     .group_by(R.namespace, R.model_name)).all()
    return {f"{ns}/{model}": int(n) for ns, model, n in rows}


def latest_request_for(s: Session, *, namespace: str, model: str) -> PlacementRequest | None:
    """The newest request for this deployment (a template for more of its replicas)."""
    R = PlacementRequestRow
    payload = s.scalar(select(R.payload).where(R.namespace == namespace, R.model_name == model)
                       .order_by(R.id.desc()).limit(1))
    return None if payload is None else PlacementRequest.parse(payload)




def mark_removed(s: Session, *, request_ids: Sequence[str], reason: str,
                 now: datetime) -> int:
    """Bound requests whose replica was taken away (scale-down): bound → removed."""
    if not request_ids:
        return 0
    R = PlacementRequestRow
    removed = s.execute(update(R).where(R.request_id.in_(list(request_ids)),
                                        R.status == RequestState.BOUND)
                        .values(status=RequestState.REMOVED, reason=reason,
                                updated_at=now)).rowcount
    # Their GPU slices are free again (a removed request's reservation holds nothing).
    s.execute(delete(GpuReservationRow).where(GpuReservationRow.owner.in_(list(request_ids))))
    return removed

