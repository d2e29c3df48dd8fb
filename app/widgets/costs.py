"""Figures and the table of the Cost reports page, drawn from one ``CostReport``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.cost import DIMENSIONS, NANO, Cell, report_columns
from db.costs import CostReport

COSTS_RANGE = "costs.range"
COSTS_GROUP_BY = "costs.group_by"
COSTS_FILTER = "costs.filter"
COSTS_EXPORT = "costs.export"

IDLE_COLOUR = "#B0B0B0"
GPU_COLOUR = "#4C78A8"
ENERGY_COLOUR = "#F58518"


def day_range(picked: Any, *, today: date) -> tuple[date, date]:
    """``st.date_input``'s value as (first, last): a range, a range half chosen, or one day."""
    if isinstance(picked, date):
        return picked, picked
    days = [d for d in (picked or ()) if isinstance(d, date)]
    if not days:
        return today, today
    return min(days), max(days)


def _label(key: Sequence[str]) -> str:
    return " · ".join(key) or "all"


def _dollars(nusd: int) -> float:
    return nusd / NANO


def cost_frame(rows: Sequence[Mapping[str, Cell]], *, by: Sequence[str]) -> pd.DataFrame:
    """The report rows as a table (money as floats for display; the CSV keeps the decimals)."""
    columns = report_columns(by)
    frame = pd.DataFrame([[float(v) if isinstance(v, Decimal) else v for v in
                           (row.get(c) for c in columns)] for row in rows], columns=columns)
    for c in columns[len(by):]:
        frame[c] = pd.to_numeric(frame[c])
    return frame


def cost_column_config(by: Sequence[str]) -> dict[str, Any]:
    money = st.column_config.NumberColumn
    return {
        "inferences": st.column_config.NumberColumn(format="localized"),
        "cost per 1k inferences ($)": money(format="$%.4f"),
        "cost per inference ($)": money(format="$%.8f"),
        "GPU cost ($)": money(format="$%.2f"),
        "energy cost ($)": money(format="$%.2f"),
        "held cost ($)": money(format="$%.2f"),
        "idle cost ($)": money(format="$%.2f"),
        "total cost ($)": money(format="$%.2f"),
        "energy (kWh)": money(format="%.3f"),
        "GPU-hours held": money(format="%.2f"),
        "GPU-hours idle": money(format="%.2f"),
    } | {DIMENSIONS[d]: st.column_config.TextColumn() for d in by}


def cost_per_1k_figure(report: CostReport) -> go.Figure:
    """$ per 1,000 inferences by group. A group's cost is everything it holds; the idle
    (unallocated) row serves nothing, so it has no bar here: its cost is in the
    breakdown beside it and in the totals' cost per 1k."""
    groups = [g for g in report.groups if g.amounts.cost_per_1k is not None]
    fig = go.Figure()
    fig.add_bar(x=[_label(g.key) for g in groups],
                y=[float(g.amounts.cost_per_1k or 0) for g in groups],
                marker={"color": GPU_COLOUR},
                customdata=[[g.amounts.inferences] for g in groups],
                hovertemplate="%{x}<br>$%{y:.4f} per 1k<br>%{customdata[0]:,} inferences"
                              "<extra></extra>")
    fig.update_layout(title="Cost per 1,000 inferences", height=340, yaxis_title="$",
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, showlegend=False)
    return fig


def cost_breakdown_figure(report: CostReport) -> go.Figure:
    """Cost by group, stacked: GPU share held, energy, and the idle (unallocated) share."""
    labels = [_label(g.key) for g in report.groups]
    kwh = [[round(g.amounts.energy_kwh, 3)] for g in report.groups]
    fig = go.Figure()
    for name, colour, values in (
            ("GPU share held", GPU_COLOUR, [g.amounts.gpu_cost_nusd for g in report.groups]),
            ("energy, share held", ENERGY_COLOUR,
             [g.amounts.energy_cost_nusd for g in report.groups]),
            ("idle (unallocated share: price and energy)", IDLE_COLOUR,
             [g.amounts.idle_cost_nusd for g in report.groups])):
        fig.add_bar(x=labels, y=[_dollars(v) for v in values], name=name,
                    marker={"color": colour}, customdata=kwh,
                    hovertemplate="%{x}<br>" + name + ": $%{y:.2f}<br>"
                                  "energy %{customdata[0]} kWh<extra></extra>")
    fig.update_layout(barmode="stack", title="Cost: held (GPU + energy) and idle, stacked",
                      height=340, yaxis_title="$", legend={"orientation": "h", "y": -0.25},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def totals_metrics(report: CostReport) -> None:
    """The report's totals, as metrics: the total (and cost per 1k) counts idle cost."""
    t = report.total
    k = st.columns(7)
    k[0].metric("Cost / 1k inferences",
                "—" if t.cost_per_1k is None else f"${t.cost_per_1k:.4f}",
                help="Total cost (held + idle) over the inferences served")
    k[1].metric("Total cost", f"${_dollars(t.total_cost_nusd):,.2f}")
    k[2].metric("Held cost", f"${_dollars(t.held_cost_nusd):,.2f}")
    k[3].metric("Idle cost", f"${_dollars(t.idle_cost_nusd):,.2f}",
                help="The unallocated share of GPUs in use: counted in the total")
    k[4].metric("Energy", f"{t.energy_kwh:,.2f} kWh")
    k[5].metric("Inferences", f"{t.inferences / 1e6:,.2f} M" if t.inferences >= 10**6
                else f"{t.inferences:,}", help=f"{t.inferences:,} inferences")
    k[6].metric("GPU-hours held", f"{t.gpu_hours:,.1f}")
