"""The cost ledger (SPEC §3.8): cost lines accumulated per UTC hour, and reports over it.

``add_cost_lines`` upserts: a line adds its amounts to the row of its hour
bucket and (model, namespace, node, GPU), so samples can arrive in any
batches and from more than one writer. An idle line (``model == ""``) stores
its unheld GPU-seconds in ``share_seconds``; reports split held and idle
GPU-seconds again by that. Its ``idle_cost_nusd`` is the unheld share of the
GPU's price and energy, and ``energy_kwh`` that share of the energy. A report's
total sums every row, idle rows included, so its cost per inference is the
fleet's (SPEC §3.8). The caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import ColumnElement, case, column, func, select, table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from core.cost import (
    IDLE_MODEL,
    CostAmounts,
    CostGroup,
    CostLine,
    check_dimensions,
    group_lines,
    merge_lines,
    total,
)
from db.base import upsert_insert
from db.metrics import copy_rows, execute_rows
from db.models import CostLedgerRow

_KEY = ("bucket_start", "model", "namespace", "node", "gpu_index")
_SUMMED = ("share_seconds", "energy_kwh", "gpu_cost_nusd", "energy_cost_nusd", "idle_cost_nusd",
           "inferences")


_COLUMNS = (*_KEY, "gpu_type", *_SUMMED)
_line_fields = attrgetter(*_KEY, "gpu_type", "amounts")
_amount_fields = attrgetter("share_seconds", "idle_share_seconds", "energy_kwh", "gpu_cost_nusd",
                            "energy_cost_nusd", "idle_cost_nusd", "inferences")


def add_cost_lines(s: Session, lines: Iterable[CostLine]) -> int:
    """Add ``lines`` into their hour buckets; returns the number of rows written.

    A sample at 5,000 GPUs books ~9,000 lines: they go to the driver as plain tuples,
    in one ``executemany`` of the upsert (SQLite) or one ``COPY`` and one upsert from it
    (PostgreSQL), each hour converted to its stored value once, and lines merged only
    when two share a key (the monitor's never do)."""
    lines = list(lines)
    if not lines:
        return 0
    dialect = s.get_bind().dialect
    hour_type = CostLedgerRow.__table__.c.bucket_start.type.dialect_impl(dialect)
    to_db = hour_type.bind_processor(dialect)
    hours: dict[int, Any] = {}

    def bucket(start: int) -> Any:
        at = hours.get(start)
        if at is None:
            at = datetime.fromtimestamp(start, UTC)
            at = hours[start] = at if to_db is None else to_db(at)
        return at

    def rows_of(lines: Sequence[CostLine]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        start = at = None  # a sample's lines share their hour: converted once in a row
        for line in lines:
            hour, model, namespace, node, gpu_index, gpu_type, a = _line_fields(line)
            if hour != start:
                start, at = hour, bucket(hour)
            share_s, idle_s, kwh, gpu, energy, idle, inferences = _amount_fields(a)
            key = (at, model, namespace, node, gpu_index)
            out[key] = (*key, gpu_type, share_s + idle_s, kwh, gpu, energy, idle, inferences)
        return out

    by_key = rows_of(lines)
    if len(by_key) < len(lines):  # one row per key: an upsert may touch a row once
        by_key = rows_of(merge_lines(lines))
    rows = list(by_key.values())
    if dialect.name == "postgresql":
        _upsert_copied(s, rows)
        return len(rows)
    execute_rows(s, _upsert(upsert_insert(s)(CostLedgerRow.__table__)), _COLUMNS, rows)
    return len(rows)


def _upsert(stmt: Any) -> Any:
    """``stmt`` adding its amounts into the row of the same key where there is one."""
    ledger = CostLedgerRow.__table__
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={**{name: ledger.c[name] + stmt.excluded[name] for name in _SUMMED},
              "gpu_type": stmt.excluded.gpu_type})


_STAGED = "cost_ledger_in"


def _upsert_copied(s: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """PostgreSQL: ``rows`` copied (``COPY``) into a temporary table of the ledger's
    columns, then upserted from it in one statement, all in the session's transaction
    (an ``executemany`` of the upsert binds and sends each row by itself)."""
    s.execute(text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGED} ON COMMIT DELETE ROWS "
                   f"AS SELECT {', '.join(_COLUMNS)} FROM cost_ledger WITH NO DATA"))
    copy_rows(s, _STAGED, _COLUMNS, rows)
    staged = table(_STAGED, *(column(c) for c in _COLUMNS))
    s.execute(_upsert(postgresql.insert(CostLedgerRow.__table__).from_select(
        list(_COLUMNS), select(*(staged.c[c] for c in _COLUMNS)))))
    s.execute(text(f"TRUNCATE {_STAGED}"))  # a second call in this transaction starts empty


@dataclass(frozen=True)
class CostReport:
    """Cost per group over [since, until): what the Cost reports page shows and exports."""

    by: tuple[str, ...]
    since: datetime
    until: datetime
    groups: list[CostGroup]
    total: CostAmounts
    hours: int  # hour buckets with any cost in the range

    @property
    def empty(self) -> bool:
        return not self.groups


def _utc_day(s: Session) -> ColumnElement[str]:
    """The UTC date of ``bucket_start`` as 'YYYY-MM-DD', grouped by in SQL (24× fewer rows)."""
    if s.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", CostLedgerRow.bucket_start), "YYYY-MM-DD")
    return func.date(CostLedgerRow.bucket_start)  # SQLite keeps naive UTC text


def cost_report(s: Session, *, since: datetime, until: datetime,
                group_by: Sequence[str]) -> CostReport:
    """Ledger rows whose hour starts in [since, until), summed per ``group_by`` dimensions."""
    by = check_dimensions(group_by)
    T = CostLedgerRow
    columns = {"model": T.model, "namespace": T.namespace, "node": T.node,
               "gpu_type": T.gpu_type, "day": _utc_day(s).label("day")}
    keys = [columns[d] for d in by]
    # Held and idle GPU-seconds share a column; the row's model tells them apart.
    is_idle = T.model == IDLE_MODEL
    figures = (
        func.sum(case((is_idle, 0.0), else_=T.share_seconds)),
        func.sum(case((is_idle, T.share_seconds), else_=0.0)),
        func.sum(T.energy_kwh), func.sum(T.gpu_cost_nusd), func.sum(T.energy_cost_nusd),
        func.sum(T.idle_cost_nusd), func.sum(T.inferences))
    where = (T.bucket_start >= since, T.bucket_start < until)
    result = s.execute(select(*keys, *figures).where(*where).group_by(*keys)).all()
    hours = s.scalar(select(func.count(func.distinct(T.bucket_start))).where(*where)) or 0
    lines = []
    for row in result:
        values = dict(zip((c.key for c in keys), row[: len(keys)], strict=True))
        held_s, idle_s, kwh, gpu, energy, idle, inferences = row[len(keys):]
        day = values.get("day")
        lines.append(CostLine(
            bucket_start=0 if day is None else int(
                datetime.fromisoformat(str(day)).replace(tzinfo=UTC).timestamp()),
            model=values.get("model", ""), namespace=values.get("namespace", ""),
            node=values.get("node", ""), gpu_index=-1, gpu_type=values.get("gpu_type", ""),
            amounts=CostAmounts(share_seconds=float(held_s or 0), idle_share_seconds=float(
                idle_s or 0), energy_kwh=float(kwh or 0), gpu_cost_nusd=int(gpu or 0),
                energy_cost_nusd=int(energy or 0), idle_cost_nusd=int(idle or 0),
                inferences=int(inferences or 0))))
    groups = group_lines(lines, by=by)
    return CostReport(by=by, since=since, until=until, groups=groups, total=total(groups),
                      hours=int(hours))
