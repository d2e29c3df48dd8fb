"""The durable outbox of webhook notifications: enqueue with the event, claim, mark.

A producer calls ``enqueue`` (or one of the ``notify_*`` helpers) inside the
transaction that records the event, so the event and its message commit
together or not at all; the controller's notify step (``core.controller.notify``)
claims due messages through ``SqlNotificationOutbox`` (one transaction per call)
and reports each attempt.

Invariants:
- one message per event: ``dedupe_key`` is unique and ``enqueue`` is an
  ``INSERT … ON CONFLICT DO NOTHING``, so a repeat (or a race between two
  controllers) queues nothing and never aborts the caller's transaction;
- a claim is one conditional UPDATE that counts the attempt and moves
  ``next_attempt_at`` ahead by a short lease (``FOR UPDATE SKIP LOCKED`` picks the
  rows on PostgreSQL; SQLite runs the statement under its single write lock), so
  two controllers never hold the same row; a report names the attempt it is
  for and is ignored when the row has moved on (``attempts`` fences the claim);
- delivery is at least once: a controller that dies between the POST and
  ``mark_sent`` leaves the row to be sent again after the lease; receivers
  deduplicate on the ``X-GSC-Delivery`` header (the row's id);
- ``last_error`` is redacted (``core.redact``) and cut to the column's size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from core import notify
from core.alerts import Severity
from core.notify import Notification
from core.ports import DueNotification
from core.redact import redact_text
from core.states import AlertState, NotificationState
from db.base import upsert_insert
from db.models import NotificationRow

ERROR_MAX = 500  # the last_error column
_KEY_MAX = 200  # the dedupe_key column

N = NotificationRow


def _key(key: str) -> str:
    """``key`` as stored: a key longer than the column keeps its head and a hash of it."""
    if len(key) <= _KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{key[:_KEY_MAX - 33]}#{digest}"


def enqueue(s: Session, n: Notification, *, dedupe_key: str, now: datetime) -> bool:
    """Queue ``n`` in the caller's transaction, due at once; False when a message with
    this ``dedupe_key`` was queued already (then nothing changes)."""
    stmt = upsert_insert(s)(N).values(
        kind=n.kind.value, payload=n.to_json(), dedupe_key=_key(dedupe_key), created_at=now,
        attempts=0, next_attempt_at=now, state=NotificationState.PENDING.value,
    ).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(N.id)
    return s.execute(stmt).first() is not None


def expire(s: Session, *, before: datetime, now: datetime) -> int:
    """Give up pending messages queued before ``before`` (dead, with the reason)."""
    result = s.execute(update(N).where(N.state == NotificationState.PENDING,
                                       N.created_at < before)
                       .values(state=NotificationState.DEAD.value, next_attempt_at=now,
                               last_error="expired: still pending at notify.max_age_s")
                       .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)


def prune(s: Session, *, before: datetime, limit: int, include_pending: bool = False) -> int:
    """Delete at most ``limit`` sent or dead messages queued before ``before``; with
    ``include_pending``, pending ones too (no webhook is configured to send them)."""
    q = select(N.id).where(N.created_at < before)
    if not include_pending:
        q = q.where(N.state != NotificationState.PENDING)
    ids = list(s.scalars(q.limit(limit)))
    if not ids:
        return 0
    return int(s.execute(delete(N).where(N.id.in_(ids))
                         .execution_options(synchronize_session=False)).rowcount or 0)


def due(s: Session, *, now: datetime, limit: int, lease_s: float = 60.0,
        ) -> list[DueNotification]:
    """Claim at most ``limit`` due pending messages (oldest first) for ``lease_s``
    seconds, counting an attempt on each; a row goes to one caller at a time."""
    pick = (select(N.id).where(N.state == NotificationState.PENDING, N.next_attempt_at <= now)
            .order_by(N.next_attempt_at, N.id).limit(limit))
    if s.get_bind().dialect.name == "postgresql":
        ids = list(s.scalars(pick.with_for_update(skip_locked=True)))
        if not ids:
            return []
        target = N.id.in_(ids)
    else:
        target = N.id.in_(pick.scalar_subquery())
    stmt = (update(N).where(target, N.state == NotificationState.PENDING,
                            N.next_attempt_at <= now)
            .values(attempts=N.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=lease_s))
            .returning(N.id, N.attempts, N.payload, N.created_at)
            .execution_options(synchronize_session=False))
    rows = sorted(s.execute(stmt).all(), key=lambda r: r.id)
    return [DueNotification(id=r.id, attempt=r.attempts, payload=r.payload,
                            created_at=r.created_at.timestamp()) for r in rows]


def _claimed(notification_id: int, attempt: int) -> tuple[Any, ...]:
    return (N.id == notification_id, N.attempts == attempt,
            N.state == NotificationState.PENDING)


def mark_sent(s: Session, notification_id: int, *, attempt: int, now: datetime) -> bool:
    """Record the delivery of ``attempt``; False when the row has moved on."""
    result = s.execute(update(N).where(*_claimed(notification_id, attempt))
                       .values(state=NotificationState.SENT.value, sent_at=now,
                               last_error=None)
                       .execution_options(synchronize_session=False))
    return result.rowcount == 1


def short_error(error: str) -> str:
    text = redact_text(" ".join(error.split()))
    return text if len(text) <= ERROR_MAX else text[:ERROR_MAX - 1] + "…"


def mark_failed(s: Session, notification_id: int, *, attempt: int, error: str,
                next_at: datetime, max_attempts: int) -> NotificationState | None:
    """Record failed ``attempt``: pending again from ``next_at``, or dead when it was the
    last of ``max_attempts``. None when the row has moved on."""
    state = NotificationState.DEAD if attempt >= max_attempts else NotificationState.PENDING
    result = s.execute(update(N).where(*_claimed(notification_id, attempt))
                       .values(state=state.value, next_attempt_at=next_at,
                               last_error=short_error(error))
                       .execution_options(synchronize_session=False))
    return state if result.rowcount == 1 else None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox row for a page: what it says, where it stands."""

    id: int
    kind: str
    title: str
    object_type: str
    object_id: str
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None


def list_outbox(s: Session, *, limit: int = 100,
                state: NotificationState | None = None) -> list[OutboxEntry]:
    """The newest ``limit`` messages (optionally in one state), newest first."""
    q = select(N).order_by(N.id.desc()).limit(limit)
    if state is not None:
        q = q.where(N.state == state)
    out = []
    for r in s.scalars(q):
        payload = r.payload if isinstance(r.payload, Mapping) else {}
        out.append(OutboxEntry(
            id=r.id, kind=r.kind, title=str(payload.get("title", "")),
            object_type=str(payload.get("object_type", "")),
            object_id=str(payload.get("object_id", "")), state=r.state, attempts=r.attempts,
            created_at=r.created_at, next_attempt_at=r.next_attempt_at, sent_at=r.sent_at,
            last_error=r.last_error))
    return out


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


# Producers: call these inside the transaction that records the event.

def notify_approval_waiting(s: Session, *, object_type: str, object_id: str | int,
                            summary: str, now: datetime, stage: str = "start",
                            fields: Sequence[tuple[object, object]] = ()) -> bool:
    """A rollout plan (``object_type="rollout"``, ``stage`` "start" or "promote") or a
    weight version (``object_type="weights"``) waits for an approver."""
    n = notify.approval_waiting(object_type=object_type, object_id=str(object_id),
                                summary=summary, fields=(("Stage", stage), *fields))
    return enqueue(s, n, dedupe_key=f"approval-waiting:{object_type}:{object_id}:{stage}",
                   now=now)


def notify_rollout_failed(s: Session, *, plan_id: str | int, reason: str, now: datetime,
                          fields: Sequence[tuple[object, object]] = ()) -> bool:
    n = notify.rollout_failed(plan_id=str(plan_id), reason=reason, fields=fields)
    return enqueue(s, n, dedupe_key=f"rollout-failed:{plan_id}", now=now)


def notify_rolled_back(s: Session, *, plan_id: str | int, reason: str, now: datetime,
                       fields: Sequence[tuple[object, object]] = ()) -> bool:
    n = notify.rolled_back(plan_id=str(plan_id), reason=reason, fields=fields)
    return enqueue(s, n, dedupe_key=f"rolled-back:{plan_id}", now=now)


def notify_breaker_opened(s: Session, *, opened_at: datetime, failures: int, reason: str,
                          now: datetime, cooldown_until: datetime | None = None) -> bool:
    """The circuit breaker opened at ``opened_at`` (one message per opening)."""
    n = notify.breaker_opened(failures=failures, reason=reason,
                              cooldown_until=_iso(cooldown_until) if cooldown_until else "")
    return enqueue(s, n, dedupe_key=f"breaker-opened:{_iso(opened_at)}", now=now)


def notify_alert(s: Session, *, name: str, severity: str, state: str,
                 labels: Mapping[str, Any], summary: str, at: datetime) -> bool:
    """Queue a message when an alert of severity critical starts firing (the monitor's
    alert transitions call this); other transitions queue nothing."""
    if state != AlertState.FIRING or severity != Severity.CRITICAL:
        return False
    shown = {str(k): str(v) for k, v in labels.items()}
    n = notify.critical_alert(name=name, summary=summary, labels=shown, started_at=_iso(at))
    ident = json.dumps(shown, sort_keys=True)
    return enqueue(s, n, dedupe_key=f"critical-alert:{name}:{_iso(at)}:{ident}", now=at)


class SqlNotificationOutbox:
    """``core.ports.NotificationOutbox``: one transaction per call."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def claim_due(self, *, now: float, limit: int, lease_s: float,
                  expire_before: float) -> Sequence[DueNotification]:
        at = datetime.fromtimestamp(now, UTC)
        with self.factory.begin() as s:
            expire(s, before=datetime.fromtimestamp(expire_before, UTC), now=at)
            return due(s, now=at, limit=limit, lease_s=lease_s)

    def prune(self, *, before: float, limit: int, include_pending: bool = False) -> int:
        with self.factory.begin() as s:
            return prune(s, before=datetime.fromtimestamp(before, UTC), limit=limit,
                         include_pending=include_pending)

    def mark_sent(self, *, notification_id: int, attempt: int, now: float) -> bool:
        with self.factory.begin() as s:
            return mark_sent(s, notification_id, attempt=attempt,
                             now=datetime.fromtimestamp(now, UTC))

    def mark_failed(self, *, notification_id: int, attempt: int, error: str,
                    next_at: float, max_attempts: int) -> str | None:
        with self.factory.begin() as s:
            state = mark_failed(s, notification_id, attempt=attempt, error=error,
                                next_at=datetime.fromtimestamp(next_at, UTC),
                                max_attempts=max_attempts)
        return None if state is None else state.value
