"""Cost reports: ledger lines grouped per dimension, as table rows and as safe CSV.

Why: the Cost reports page shows, and exports, the same numbers; both come
from ``report_rows``. Pure: no I/O.

Invariants: the idle (unallocated) share of GPUs in use groups under
``UNALLOCATED`` in the model and namespace dimensions, as its own row, and is
counted in every total (SPEC §3.8); money is exact ``Decimal`` dollars. CSV:
every text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
return gets a leading ``'`` (formula injection); numeric cells are written as
numbers and left alone (a number cannot carry a formula; costs are never
negative).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from core.cost.formula import usd
from core.cost.ledger import CostAmounts, CostLine, day_of
from core.errors import ValidationError

UNALLOCATED = "(unallocated)"  # how an idle line's model/namespace reads in reports

# Report dimensions, in the order they are offered, with their column titles.
DIMENSIONS: Mapping[str, str] = {
    "model": "model",
    "namespace": "namespace",
    "node": "node",
    "gpu_type": "GPU type",
    "day": "day (UTC)",
}

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class CostGroup:
    """One report row: the group's key (one value per dimension) and its sums."""

    key: tuple[str, ...]
    amounts: CostAmounts


def check_dimensions(by: Sequence[str]) -> tuple[str, ...]:
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise ValidationError("group_by", f"unknown dimension {unknown[0]!r}; "
                              f"choose from {', '.join(DIMENSIONS)}")
    if len(set(by)) != len(by):
        raise ValidationError("group_by", "names a dimension twice")
    return tuple(by)


def dimension_value(line: CostLine, dimension: str) -> str:
    if dimension == "model":
        return line.model or UNALLOCATED
    if dimension == "namespace":
        return line.namespace or UNALLOCATED
    if dimension == "node":
        return line.node
    if dimension == "gpu_type":
        return line.gpu_type
    if dimension == "day":
        return day_of(line.bucket_start)
    raise ValidationError("group_by", f"unknown dimension {dimension!r}")


def group_lines(lines: Iterable[CostLine], *, by: Sequence[str]) -> list[CostGroup]:
    """Lines summed per value of the ``by`` dimensions, sorted by key."""
    by = check_dimensions(by)
    sums: dict[tuple[str, ...], CostAmounts] = {}
    for line in lines:
        key = tuple(dimension_value(line, d) for d in by)
        sums[key] = sums.get(key, CostAmounts()) + line.amounts
    return [CostGroup(key=k, amounts=sums[k]) for k in sorted(sums)]


def filter_groups(groups: Iterable[CostGroup], text: str) -> list[CostGroup]:
    """Groups with ``text`` in any part of their key (case-insensitive); all when blank."""
    needle = text.strip().lower()
    if not needle:
        return list(groups)
    return [g for g in groups if any(needle in part.lower() for part in g.key)]


def total(groups: Iterable[CostGroup]) -> CostAmounts:
    """The groups summed: idle rows included, as the fleet pays them."""
    out = CostAmounts()
    for g in groups:
        out = out + g.amounts
    return out


REPORT_FIGURES = ("inferences", "cost per 1k inferences ($)", "cost per inference ($)",
                  "GPU cost ($)", "energy cost ($)", "held cost ($)", "idle cost ($)",
                  "total cost ($)", "energy (kWh)", "GPU-hours held", "GPU-hours idle")

Cell = str | int | float | Decimal | None


def report_columns(by: Sequence[str]) -> list[str]:
    return [DIMENSIONS[d] for d in check_dimensions(by)] + list(REPORT_FIGURES)


def report_rows(groups: Iterable[CostGroup], *, by: Sequence[str]) -> list[dict[str, Cell]]:
    """The report as rows of (column → value): what the table shows and the CSV holds.

    Money is exact ``Decimal`` dollars (cost per inference to 1e-12 $); energy
    and GPU-hours are rounded to 6 decimals. "GPU cost" and "energy cost" are the
    held shares' parts; "idle cost" is the unallocated share's part of both;
    "total cost" = held + idle, and cost per inference is over the total.
    """
    columns = report_columns(by)
    rows = []
    for g in groups:
        a = g.amounts
        figures: list[Cell] = [
            a.inferences, a.cost_per_1k, a.cost_per_inference, usd(a.gpu_cost_nusd),
            usd(a.energy_cost_nusd), usd(a.held_cost_nusd), usd(a.idle_cost_nusd),
            usd(a.total_cost_nusd), round(a.energy_kwh, 6), round(a.gpu_hours, 6),
            round(a.idle_gpu_hours, 6)]
        rows.append(dict(zip(columns, [*g.key, *figures], strict=True)))
    return rows


def neutralize(cell: str) -> str:
    """A text cell a spreadsheet would run as a formula, made inert with a leading quote."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def _csv_cell(value: Cell) -> str | int | float:
    # Numbers are written as numbers: a number cannot carry a formula (and cost
    # figures are never negative). Every text cell is neutralized.
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | float):
        return value
    return neutralize(str(value))


def to_csv(rows: Sequence[Mapping[str, Cell]], *, columns: Sequence[str]) -> str:
    """RFC 4180 CSV of ``rows`` with formula-injection neutralization of text cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([neutralize(c) for c in columns])
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buffer.getvalue()
