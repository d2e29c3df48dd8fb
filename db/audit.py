"""The audit trail: every human action and controller decision worth asking about."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import (
    AuditEventRow,
)


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


