"""The audit trail: every human action and controller decision worth asking about.

``audit_events`` holds every human action (done or refused, with what the person was
shown) and the controller's own actions; ``trail`` merges it with the placement and
autoscaling decisions into one timeline, filtered in SQL (by actor, action, object
text and time range) and bounded by ``limit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from db.models import (
    AuditEventRow,
    AutoscalingDecisionRow,
    DecisionRow,
    PlacementRequestRow,
)

MAX_TRAIL_ROWS = 5000


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


def recorded_since(s: Session, *, action: str, since: datetime, actor: str,
                   object_id: str) -> bool:
    """Whether ``action`` was audited since ``since`` for ``actor`` or for ``object_id``."""
    A = AuditEventRow
    q = (select(A.id).where(A.action == action, A.at >= since)
         .where(or_(A.actor == actor, A.object_id == object_id)).limit(1))
    return s.scalar(q) is not None


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




@dataclass(frozen=True, slots=True)
class TrailEntry:
    """One line of the Audit page: an action, a refusal, or a controller decision."""

    at: datetime
    source: str  # "action" (audit_events), "placement", "autoscaling"
    actor: str
    action: str
    object_type: str
    object_id: str
    reason: str
    details: dict[str, Any]

    @property
    def outcome(self) -> str:
        return str(self.details.get("outcome", "done"))

    @property
    def shown(self) -> dict[str, Any] | None:
        shown = self.details.get("shown")
        return shown if isinstance(shown, dict) else None


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _window(q: Select[Any], column: Any, since: datetime | None,
            until: datetime | None) -> Select[Any]:
    if since is not None:
        q = q.where(column >= since)
    if until is not None:
        q = q.where(column < until)
    return q


def trail(s: Session, *, since: datetime | None = None, until: datetime | None = None,
          actor: str | None = None, action: str | None = None, object_text: str = "",
          sources: tuple[str, ...] = ("action", "placement", "autoscaling"),
          limit: int = 500) -> list[TrailEntry]:
    """The newest ``limit`` entries matching every filter given, newest first."""
    limit = max(1, min(limit, MAX_TRAIL_ROWS))
    obj = object_text.strip()
    out: list[TrailEntry] = []
    if "action" in sources:
        A = AuditEventRow
        q = _window(select(A), A.at, since, until).order_by(A.at.desc(), A.id.desc())
        if actor:
            q = q.where(A.actor == actor)
        if action:
            q = q.where(A.action == action)
        if obj:
            q = q.where((A.object_id.like(_like(obj), escape="\\"))
                        | (A.object_type.like(_like(obj), escape="\\")))
        out += [TrailEntry(r.at, "action", r.actor, r.action, r.object_type, r.object_id,
                           r.reason, dict(r.details or {}))
                for r in s.scalars(q.limit(limit))]
    if "placement" in sources and action in (None, "", "place", "place-failed"):
        D, R = DecisionRow, PlacementRequestRow
        q = (_window(select(D, R.request_id, R.model_name).join(R, D.request_pk == R.id),
                     D.created_at, since, until).order_by(D.created_at.desc(), D.id.desc()))
        if actor:
            q = q.where(D.decided_by == actor)
        if action == "place":
            q = q.where(D.placed.is_(True))
        elif action == "place-failed":
            q = q.where(D.placed.is_(False))
        if obj:
            q = q.where(R.request_id.like(_like(obj), escape="\\")
                        | R.model_name.like(_like(obj), escape="\\")
                        | D.node.like(_like(obj), escape="\\"))
        for d, rid, model in s.execute(q.limit(limit)).all():
            out.append(TrailEntry(
                d.created_at, "placement", d.decided_by,
                "place" if d.placed else "place-failed", "placement_request", rid, d.summary,
                {"model": model, "node": d.node, "gpu_index": d.gpu_index,
                 "gpu_type": d.gpu_type, "score": d.score, "share_pct": d.share_pct,
                 "weight_version": d.weight_version}))
    scale_actions = {"scale-up": "up", "scale-down": "down", "scale-hold": "hold"}
    if "autoscaling" in sources and (not action or action in scale_actions) and \
            actor in (None, "", "controller"):
        S = AutoscalingDecisionRow
        q = _window(select(S), S.created_at, since, until).order_by(S.created_at.desc(),
                                                                    S.id.desc())
        if action:
            q = q.where(S.action == scale_actions[action])
        if obj:
            q = q.where(S.deployment.like(_like(obj), escape="\\"))
        out += [TrailEntry(r.created_at, "autoscaling", "controller", f"scale-{r.action}",
                           "deployment", r.deployment, r.reason,
                           {"replicas_before": r.replicas_before,
                            "replicas_after": r.replicas_after, **dict(r.inputs or {})})
                for r in s.scalars(q.limit(limit))]
    out.sort(key=lambda e: e.at, reverse=True)
    return out[:limit]


def trail_facets(s: Session, *, limit: int = 200) -> tuple[list[str], list[str]]:
    """The actors and actions known to the audit (for the page's filter choices)."""
    A = AuditEventRow
    actors = list(s.scalars(select(A.actor).distinct().order_by(A.actor).limit(limit)))
    actions = list(s.scalars(select(A.action).distinct().order_by(A.action).limit(limit)))
    return actors, actions
