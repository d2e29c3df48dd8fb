"""AppTest: the Cost reports page shows the backfilled ledger and exports the same numbers."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import services
from core.cost import UNALLOCATED, CostAmounts, CostLine, hour_of
from db.audit import list_audit
from db.costs import add_cost_lines
from tests.app.conftest import ENTRY


@pytest.fixture()
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The data handed to ``st.download_button`` on each run (AppTest cannot click-download)."""
    seen: list[str] = []
    original = st.download_button

    def capture(label: str, data: Any = None, **kwargs: Any) -> bool:
        # The page hands a callable (Streamlit runs it on the server at the click, which
        # audits the export); calling it here is what that click does.
        made = data() if callable(data) else data
        seen.append(made.decode() if isinstance(made, bytes) else made)
        return original(label, made, **kwargs)

    monkeypatch.setattr(st, "download_button", capture)
    yield seen


def costs_page() -> AppTest:
    """The console on the Cost reports page, once the start-up history has been written."""
    at = AppTest.from_file(ENTRY, default_timeout=60)
    at.run()
    backfill = services.runtime().backfill
    assert backfill is not None
    backfill.join(timeout=60)
    at.switch_page("../pages/costs.py")
    at.run()
    assert not at.exception, at.exception
    return at


def table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "cost per 1k inferences ($)" in d.value.columns)


def parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_page_shows_backfilled_cost_by_model_and_the_csv_holds_the_same_numbers(
        exported: list[str]) -> None:
    at = costs_page()
    assert at.title[0].value == "Cost reports"
    assert not at.error
    frame = table(at)
    # The default fleet: every model, plus the unallocated share of its A100s as idle cost.
    assert len(frame) >= 10 and UNALLOCATED in set(frame["model"])
    held = frame[frame["model"] != UNALLOCATED]
    assert (held["inferences"] > 0).all() and (held["cost per 1k inferences ($)"] > 0).all()
    assert frame["idle cost ($)"].sum() > 0
    assert len(at.get("plotly_chart")) == 2

    rows = parse(exported[-1])
    assert [r["model"] for r in rows] == list(frame["model"])
    for column in ("inferences", "held cost ($)", "idle cost ($)", "energy (kWh)"):
        csv_total = sum(float(r[column]) for r in rows)
        assert csv_total == pytest.approx(float(frame[column].sum()), rel=1e-9), column
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Idle cost"] == f"${frame['idle cost ($)'].sum():,.2f}"
    assert metrics["Held cost"] == f"${frame['held cost ($)'].sum():,.2f}"
    # SPEC §3.8 (corrected): the idle row is shown apart AND counted in the totals.
    assert frame["total cost ($)"].sum() == pytest.approx(
        frame["held cost ($)"].sum() + frame["idle cost ($)"].sum(), rel=1e-9)
    assert metrics["Total cost"] == f"${frame['total cost ($)'].sum():,.2f}"
    per_1k = frame["total cost ($)"].sum() * 1000 / frame["inferences"].sum()
    assert metrics["Cost / 1k inferences"] == f"${per_1k:.4f}"
    assert per_1k > held["held cost ($)"].sum() * 1000 / held["inferences"].sum()


def test_csv_neutralizes_formula_cells_and_follows_grouping_and_filter(
        exported: list[str]) -> None:
    at = costs_page()
    evil = ["=HYPERLINK(\"http://x\")", "+SUM(A1)", "-2+3", "@cmd", "\tpad", "\rret"]
    bucket = hour_of(datetime.now(UTC).timestamp())
    with services.runtime().factory.begin() as s:
        add_cost_lines(s, [CostLine(bucket_start=bucket, model=m, namespace="team-x",
                                    node="h100-0", gpu_index=0, gpu_type="H100",
                                    amounts=CostAmounts(gpu_cost_nusd=10**9, inferences=100))
                           for m in evil])
    st.cache_data.clear()
    at.run()
    rows = {r["model"]: r for r in parse(exported[-1])}
    for name in evil:
        assert "'" + name in rows, name  # neutralized in the file…
        assert rows["'" + name]["cost per 1k inferences ($)"] == "10.000000000"
    assert set(evil) <= set(table(at)["model"])  # …and shown as they are on the page

    at.multiselect(key="costs.group_by").set_value(["namespace", "day"])
    at.run()
    frame = table(at)
    assert list(frame.columns[:2]) == ["namespace", "day (UTC)"]
    assert {"team-x", UNALLOCATED} <= set(frame["namespace"])

    at.text_input(key="costs.filter").set_value("team-x")
    at.run()
    assert set(table(at)["namespace"]) == {"team-x"}
    assert [r["namespace"] for r in parse(exported[-1])] == ["team-x"] * len(table(at)) != []


def test_a_range_without_cost_says_so_instead_of_an_empty_table() -> None:
    at = costs_page()
    today = services.now().date()
    at.date_input(key="costs.range").set_value((today - timedelta(days=40),
                                                today - timedelta(days=35)))
    at.run()
    assert not at.exception and not at.error
    assert any("No cost is booked" in i.value for i in at.info)
    at.multiselect(key="costs.group_by").set_value([])
    at.run()
    assert any("at least one dimension" in i.value for i in at.info)


def test_each_export_is_audited_with_who_which_report_its_filter_and_rows(
        exported: list[str]) -> None:
    at = costs_page()
    at.text_input(key="costs.filter").set_value("llama")
    at.run()
    with services.runtime().factory() as s:
        entries = list_audit(s, action="export-csv")
    assert entries, "the export was not audited"
    latest = entries[0]
    assert latest.actor == "local-approver" and latest.object_id == "cost-report"
    assert latest.details["filters"]["filter"] == "llama"
    assert latest.details["rows"] == len(parse(exported[-1]))
