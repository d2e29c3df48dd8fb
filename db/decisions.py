"""Placement decisions with their matrix and weight version, and the slices bound
requests hold (to rebuild a fresh twin's pods). The caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from core.model import PlacementRequest
from core.placement import Decision, framework
from core.states import RequestState
from db.models import (
    DecisionRow,
    PlacementRequestRow,
)

# Rows of a decision's matrix kept in the store (the count is the placement core's, so
# that the controller can build them while it decides: ``Decision.matrix_json``).
STORED_MATRIX_ROWS = framework.STORED_MATRIX_ROWS


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
    predicted_throughput: float | None = None, max_matrix_rows: int = STORED_MATRIX_ROWS,
) -> int:
    row = _decision_row(request_pk=request_pk, decision=decision, now=now,
                        decided_by=decided_by, predicted_throughput=predicted_throughput,
                        max_matrix_rows=max_matrix_rows)
    s.add(row)
    s.flush()
    return row.id


def record_decisions(
    s: Session, *, decisions: Sequence[tuple[int, Decision]], now: datetime, decided_by: str,
    max_matrix_rows: int = STORED_MATRIX_ROWS,
) -> list[int]:
    """``record_decision`` for a batch of ``(request pk, decision)`` in one flush; the ids
    in the same order."""
    if not decisions:
        return []
    postgres = s.get_bind().dialect.name == "postgresql"
    rows = [_decision_values(request_pk=pk, decision=d, now=now, decided_by=decided_by,
                             predicted_throughput=None, max_matrix_rows=max_matrix_rows,
                             matrix_as_json=postgres)
            for pk, d in decisions]
    if postgres:
        return _copy_rows(s, rows)
    # One multi-row INSERT … RETURNING (no unit of work to flush object by object).
    D = DecisionRow
    ids = s.execute(insert(D).returning(D.id, sort_by_parameter_order=True), rows).scalars()
    return [int(i) for i in ids]


_COLUMNS = ("id", "request_pk", "placed", "node", "gpu_index", "gpu_type", "workload_class",
            "share_pct", "memory_mib", "score", "summary", "matrix", "weight_version",
            "predicted_throughput", "decided_by", "created_at")


def _copy_rows(s: Session, rows: Sequence[dict[str, Any]]) -> list[int]:
    """PostgreSQL: the ids taken from the table's sequence in one statement, then the rows
    streamed with ``COPY … FROM STDIN`` on the session's own connection (its transaction),
    each matrix as the JSON text the decision made once (``Decision.matrix_json``; the
    controller makes it while it decides): a multi-row INSERT would bind, adapt and
    serialize each of the rows' 15 parameters through SQLAlchemy (most of a recorded
    decision's store cost)."""
    if any(r["created_at"].tzinfo is None for r in rows):  # as ``UtcDateTime`` refuses
        raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
    table = DecisionRow.__table__.name
    raw = s.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) "
                    "FROM generate_series(1, %s)", (table, len(rows)))
        ids = [int(r[0]) for r in cur.fetchall()]
        with cur.copy(f"COPY {table} ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for id_, row in zip(ids, rows, strict=True):
                copy.write_row((id_, *(row[c] if c != "matrix" or isinstance(row[c], str)
                                       else json.dumps(row[c], separators=(",", ":"))
                                       for c in _COLUMNS[1:])))
    return ids


def _decision_row(*, request_pk: int, decision: Decision, now: datetime, decided_by: str,
                  predicted_throughput: float | None, max_matrix_rows: int) -> DecisionRow:
    return DecisionRow(**_decision_values(
        request_pk=request_pk, decision=decision, now=now, decided_by=decided_by,
        predicted_throughput=predicted_throughput, max_matrix_rows=max_matrix_rows))


def _decision_values(*, request_pk: int, decision: Decision, now: datetime, decided_by: str,
                     predicted_throughput: float | None, max_matrix_rows: int,
                     matrix_as_json: bool = False) -> dict[str, Any]:
    # Only the stored rows of the matrix are built (the top ones and the chosen one);
    # ``matrix_as_json``: as the JSON text the decision keeps (for ``_copy_rows``).
    return {
        "request_pk": request_pk, "placed": decision.placed, "node": decision.node,
        "gpu_index": decision.gpu_index, "gpu_type": decision.gpu_type,
        "workload_class": decision.workload_class.value, "share_pct": decision.share_pct,
        "memory_mib": decision.memory_mib, "score": decision.score,
        "summary": decision.summary,
        "matrix": decision.matrix_json(max_rows=max_matrix_rows) if matrix_as_json
        else decision.matrix_dict(max_rows=max_matrix_rows),
        "weight_version": decision.weight_version,
        "predicted_throughput": predicted_throughput, "decided_by": decided_by,
        "created_at": now,
    }


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
         .where(R.status == RequestState.BOUND).order_by(D.id))
    return [HeldPlacement(*row[:7], request=PlacementRequest.parse(row[7]))
            for row in s.execute(q).all()]
