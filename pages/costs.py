"""Cost reports: $/inference by model, node, GPU type, namespace and day; idle cost; energy."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from app import auth, cost_services, services
from app.widgets.costs import (
    COSTS_EXPORT,
    COSTS_FILTER,
    COSTS_GROUP_BY,
    COSTS_RANGE,
    cost_breakdown_figure,
    cost_column_config,
    cost_frame,
    cost_per_1k_figure,
    day_range,
    totals_metrics,
)
from app.widgets.problems import show_unavailable
from core.cost import DIMENSIONS
from core.errors import SchedulerError

st.title("Cost reports")
st.caption("The fleet pays for every GPU that hosts at least one model server, whole, plus "
           "its energy × price per kWh; each server is charged its share of the GPU. The "
           "unallocated share of a GPU in use is idle cost: its own row, counted in the "
           "total and in the total's cost per inference. A GPU hosting no model server is "
           "released to the pool and costs nothing. Days are UTC.")

today = services.now().date()
left, middle, right = st.columns([2, 3, 2])
picked = left.date_input("Days", value=(today - timedelta(days=6), today), max_value=today,
                         key=COSTS_RANGE)
by = middle.multiselect("Group by", options=list(DIMENSIONS), default=["model"],
                        format_func=lambda d: DIMENSIONS[d], key=COSTS_GROUP_BY)
filter_text = right.text_input("Filter rows", placeholder="e.g. llama, h100-2, team-a",
                               key=COSTS_FILTER)
if not by:
    st.info("Choose at least one dimension to group by.")
    st.stop()

first_day, last_day = day_range(picked, today=today)
try:
    report = cost_services.cost_report(first_day=first_day, last_day=last_day, group_by=by,
                                  filter_text=filter_text)
except services.Unavailable as exc:
    show_unavailable(exc, doing="read the cost ledger")
    st.stop()
except SchedulerError as exc:
    st.error(f"Could not read the cost ledger: {exc}. Check that the store "
             f"({services.store_display_url()}) is reachable, then reload the page.")
    st.stop()

if report.empty:
    if filter_text.strip():
        st.info(f"No row matches “{filter_text.strip()}”. Clear the filter to see every row.")
    else:
        st.info(f"No cost is booked from {first_day} to {last_day}. The monitor books cost "
                "with every sample of a fleet it can see the layout of; include today in the "
                "range, or wait a minute after start-up.")
    st.stop()

st.caption(f"{first_day} to {last_day} (UTC), {report.hours} hours with cost, "
           f"{len(report.groups)} rows" + (" matching the filter" if filter_text.strip()
                                          else "") + ". Totals are over the rows shown.")
totals_metrics(report)

charts = st.columns(2)
charts[0].plotly_chart(cost_per_1k_figure(report), width="stretch", key="costs.chart.per_1k")
charts[1].plotly_chart(cost_breakdown_figure(report), width="stretch",
                       key="costs.chart.breakdown")

rows = cost_services.cost_rows(report)
st.dataframe(cost_frame(rows, by=report.by), hide_index=True, width="stretch",
             column_config=cost_column_config(report.by))
csv_text = cost_services.cost_csv(report)
who = auth.actor()
export_filters = {"first_day": first_day, "last_day": last_day, "group_by": report.by,
                  "filter": filter_text}
st.download_button(
    "Export CSV", mime="text/csv", icon=":material/download:",
    # A callable: Streamlit runs it on the server when the person clicks, so the export is
    # audited when it happens (``cost_services.export_csv``).
    data=lambda: cost_services.export_csv(who, "cost-report", csv_text=csv_text, rows=len(rows),
                                     filters=export_filters),
    file_name=f"cost-report_{first_day}_{last_day}_by-{'-'.join(report.by)}.csv",
    key=COSTS_EXPORT)
