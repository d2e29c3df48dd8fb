"""The autoscaler's decision log: every action and window start with its inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import (
    AutoscalingDecisionRow,
)


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
