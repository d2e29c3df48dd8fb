"""Cost reports (the ledger over days, grouped and filtered, as rows and CSV) and the
audited CSV exports of every page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import streamlit as st

from app import services
from app.actions import action, audit_details
from core.auth import Actor, Role
from core.cost import check_dimensions, filter_groups, report_columns, report_rows, to_csv
from core.cost import total as cost_total
from core.errors import ValidationError
from db import audit
from db.costs import CostReport
from db.costs import cost_report as ledger_report

# ---- cost reports


def cost_report(*, first_day: date, last_day: date, group_by: Sequence[str],
                filter_text: str = "") -> CostReport:
    """The cost ledger over the UTC days ``first_day``..``last_day`` (inclusive), grouped.

    ``filter_text`` keeps the groups whose key contains it (totals follow the rows
    kept). Raises ``ValidationError`` for a bad range or dimension and
    ``StoreUnavailable`` when the store does not answer.
    """
    if first_day > last_day:
        raise ValidationError("range", "the first day is after the last day")
    with services.store_call():
        report = _cost_report(services.runtime().url, first_day, last_day,
                              check_dimensions(group_by))
    if not filter_text.strip():
        return report
    groups = filter_groups(report.groups, filter_text)
    return replace(report, groups=groups, total=cost_total(groups))


@st.cache_data(ttl=15, show_spinner=False)
def _cost_report(store_url: str, first_day: date, last_day: date,
                 by: tuple[str, ...]) -> CostReport:
    # ``store_url`` only keys the cache: a report belongs to the store it was read from.
    since = datetime.combine(first_day, datetime.min.time(), UTC)
    until = datetime.combine(last_day, datetime.min.time(), UTC) + timedelta(days=1)
    # A store error propagates (not cached): services.store_call() in cost_report.
    with services.runtime().factory() as s:
        return ledger_report(s, since=since, until=until, group_by=by)


def cost_rows(report: CostReport) -> list[dict[str, Any]]:
    """The report's rows, column → value: the table shows these and the CSV holds them."""
    return report_rows(report.groups, by=report.by)


def cost_csv(report: CostReport) -> str:
    """The report as CSV (text cells neutralized against formula injection)."""
    return to_csv(cost_rows(report), columns=report_columns(report.by))


# ---- exports (audited when the file is made, which is when the person clicks)
MAX_EXPORT_FILTERS_CHARS = 2000


@action("export-csv", role=Role.VIEWER, object_type="export", object_arg="kind")
def export_csv(actor: Actor, kind: str, *, csv_text: str, rows: int,
               filters: Mapping[str, Any] | None = None, reason: str = "") -> bytes:
    """The CSV to download, audited (who, which report, its filters, how many rows).

    Called by ``st.download_button``'s deferred ``data`` callable, which Streamlit runs on
    the server when the person clicks: the download is recorded when it happens, and a
    store that does not answer stops the download rather than losing its audit entry."""
    with services.store_call(), services.runtime().factory.begin() as s:
        audit.record_audit(s, actor=actor.name, action="export-csv", object_type="export",
                          object_id=kind[:128], reason=reason, now=services.now(),
                          details=audit_details(actor, rows=rows,
                                                bytes=len(csv_text.encode()),
                                                filters={k: str(v)[:MAX_EXPORT_FILTERS_CHARS]
                                                         for k, v in (filters or {}).items()}))
    return csv_text.encode()
