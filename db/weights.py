"""Scheduler-weight actions with their audit entry, and the feedback loop's store reads.

Every human or controller action on a weight version (propose, approve,
reject, roll back) is written together with its audit event in the caller's
transaction, so neither lands without the other. Each transition starts with a
conditional ``UPDATE … WHERE status = <expected>``: of two people acting on
the same version at once, the second finds the status changed and gets
``WeightConflict`` instead of, say, rejecting a version that was just made
active (which would leave no active version).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import ValidationError
from core.feedback import PlacedReplica, Proposal
from core.model import WorkloadClass
from db import audit, versions
from db.models import DecisionRow, PlacementRequestRow, WeightVersionRow

OBJECT_TYPE = "weight_version"


class WeightConflict(ValueError):
    """The version is not in the state the action expects (someone else acted first)."""


def _reason(reason: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise ValidationError("reason", "is required: say why, for the audit trail")
    return text


def _claim(s: Session, version: int, *, expected: tuple[str, ...], action: str,
           actor: str, now: datetime) -> None:
    """Lock ``version`` if its status is one of ``expected``; else say why not."""
    W = WeightVersionRow
    hit = s.execute(update(W).where(W.version == version, W.status.in_(expected))
                    .values(decided_by=actor, decided_at=now)
                    .execution_options(synchronize_session=False)).rowcount
    if hit == 1:
        return
    status = s.scalar(select(W.status).where(W.version == version))
    if status is None:
        raise KeyError(f"no weight version {version}")
    raise WeightConflict(f"version {version} is {status}; it cannot be {action} "
                         "(reload the page: someone may have acted on it)")


def _conflict(exc: IntegrityError) -> WeightConflict:
    return WeightConflict("another weight change was committed at the same time; "
                          "reload and try again")


def record_proposal(s: Session, proposal: Proposal, *, author: str,
                    now: datetime) -> versions.WeightVersion:
    """Store a feedback proposal (status ``proposed``) with its evidence, and audit it."""
    version = versions.propose_weights(s, proposal.weights, author=author, reason=proposal.reason,
                                   evidence=proposal.evidence, now=now)
    audit.record_audit(s, actor=author, action="propose-weights", object_type=OBJECT_TYPE,
                      object_id=str(version.version), reason=proposal.reason, now=now,
                      details={"weights": version.weights.as_dict(),
                               "based_on_version": proposal.based_on_version,
                               "improvement": proposal.improvement})
    return version


def approve(s: Session, *, version: int, actor: str, reason: str, now: datetime,
            details: Mapping[str, Any] | None = None) -> versions.WeightVersion:
    """A proposed version becomes active (the active one superseded); audited."""
    why = _reason(reason)
    previous = versions.active_weights(s)
    _claim(s, version, expected=("proposed",), action="approved", actor=actor, now=now)
    try:
        decided = versions.decide_weights(s, version=version, approve=True, actor=actor, now=now)
    except IntegrityError as exc:
        raise _conflict(exc) from exc
    audit.record_audit(s, actor=actor, action="approve-weights", object_type=OBJECT_TYPE,
                      object_id=str(version), reason=why, now=now,
                      details={"weights": decided.weights.as_dict(),
                               "previous_version": previous.version if previous else None,
                               **dict(details or {})})
    return decided


def reject(s: Session, *, version: int, actor: str, reason: str, now: datetime,
           details: Mapping[str, Any] | None = None) -> versions.WeightVersion:
    """A proposed version is rejected; audited."""
    why = _reason(reason)
    _claim(s, version, expected=("proposed",), action="rejected", actor=actor, now=now)
    decided = versions.decide_weights(s, version=version, approve=False, actor=actor, now=now)
    audit.record_audit(s, actor=actor, action="reject-weights", object_type=OBJECT_TYPE,
                      object_id=str(version), reason=why, now=now,
                      details={"weights": decided.weights.as_dict(), **dict(details or {})})
    return decided


ROLLBACK_TARGETS = ("superseded", "rolled-back")


def roll_back(s: Session, *, to_version: int, actor: str, reason: str, now: datetime,
              details: Mapping[str, Any] | None = None) -> versions.WeightVersion:
    """An earlier version (superseded or rolled back) is active again; audited."""
    why = _reason(reason)
    previous = versions.active_weights(s)
    _claim(s, to_version, expected=ROLLBACK_TARGETS, action="rolled back to", actor=actor,
           now=now)
    try:
        restored = versions.rollback_weights(s, to_version=to_version, actor=actor, now=now)
    except IntegrityError as exc:
        raise _conflict(exc) from exc
    audit.record_audit(s, actor=actor, action="rollback-weights", object_type=OBJECT_TYPE,
                      object_id=str(to_version), reason=why, now=now,
                      details={"weights": restored.weights.as_dict(),
                               "from_version": previous.version if previous else None,
                               **dict(details or {})})
    return restored


def pending_proposals(s: Session) -> list[versions.WeightVersion]:
    """Versions waiting for an approver, newest first."""
    return [v for v in versions.list_weight_versions(s) if v.status == "proposed"]


def last_proposal_at(s: Session) -> datetime | None:
    """When the feedback loop (or anyone) last proposed a version."""
    W = WeightVersionRow
    return s.scalar(select(func.max(W.created_at)).where(W.author != "system"))


def placed_replicas(s: Session) -> list[PlacedReplica]:
    """Every bound request's latest placed decision, as the feedback loop observes it."""
    D, R = DecisionRow, PlacementRequestRow
    latest = (select(D.request_pk, func.max(D.id).label("id"))
              .where(D.placed.is_(True)).group_by(D.request_pk).subquery())
    q = (select(R.request_id, R.model_name, R.namespace, R.payload, D.node, D.gpu_index,
                D.workload_class, D.share_pct, D.weight_version, D.id)
         .join(latest, latest.c.request_pk == R.id).join(D, D.id == latest.c.id)
         .where(R.status == "bound").order_by(D.id))
    out = []
    for rid, model, ns, payload, node, gpu, wc, share, version, did in s.execute(q).all():
        if node is None or gpu is None:
            continue
        sla = (payload or {}).get("latency_sla_ms")
        out.append(PlacedReplica(
            request_id=rid, model=model, namespace=ns, node=node, gpu_index=gpu,
            workload_class=WorkloadClass(wc), share_pct=share, weight_version=version,
            decision_id=did, latency_sla_ms=float(sla) if sla is not None else None))
    return out
