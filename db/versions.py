"""Scheduler-weight versions: the rows and their transitions (one active at a time).

The actions with their audit entry are ``db.weights``; these are the single
conditional statements they are made of. The caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.model import COMPONENTS, SchedulerWeights
from core.states import WeightState
from db.models import (
    WeightVersionRow,
)


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
    row = s.scalars(select(WeightVersionRow).where(WeightVersionRow.status == WeightState.ACTIVE)
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
            row = _add_version(s, weights, status=WeightState.ACTIVE, author="system",
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
    row = _add_version(s, weights, status=WeightState.PROPOSED, author=author, reason=reason,
                       evidence=evidence, parent=None if current is None else current.version,
                       now=now)
    return _weight_version(row)


def _activate(s: Session, version: int, *, actor: str, now: datetime,
              previous_status: str) -> None:
    W = WeightVersionRow
    s.execute(update(W).where(W.status == WeightState.ACTIVE, W.version != version)
              .values(status=previous_status, decided_by=actor, decided_at=now))
    s.execute(update(W).where(W.version == version)
              .values(status=WeightState.ACTIVE, decided_by=actor, decided_at=now))


def decide_weights(s: Session, *, version: int, approve: bool, actor: str,
                   now: datetime) -> WeightVersion:
    """Approve (it becomes active, the previous one superseded) or reject a proposal."""
    row = s.get(WeightVersionRow, version)
    if row is None:
        raise KeyError(f"no weight version {version}")
    if row.status != WeightState.PROPOSED:
        raise ValueError(f"version {version} is {row.status}, not proposed")
    if approve:
        _activate(s, version, actor=actor, now=now, previous_status=WeightState.SUPERSEDED)
    else:
        row.status, row.decided_by, row.decided_at = WeightState.REJECTED, actor, now
    s.flush()
    s.refresh(row)
    return _weight_version(row)


def rollback_weights(s: Session, *, to_version: int, actor: str,
                     now: datetime) -> WeightVersion:
    """Make an earlier version active again; the current one is marked rolled-back."""
    row = s.get(WeightVersionRow, to_version)
    if row is None:
        raise KeyError(f"no weight version {to_version}")
    if row.status in (WeightState.PROPOSED, WeightState.REJECTED):
        raise ValueError(f"version {to_version} was never active ({row.status})")
    _activate(s, to_version, actor=actor, now=now, previous_status=WeightState.ROLLED_BACK)
    s.flush()
    s.refresh(row)
    return _weight_version(row)


def list_weight_versions(s: Session) -> list[WeightVersion]:
    return [_weight_version(r) for r in
            s.scalars(select(WeightVersionRow).order_by(WeightVersionRow.version.desc()))]


