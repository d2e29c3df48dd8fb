"""Figures and tables for the Autoscaling page."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def replicas_figure(history: pd.DataFrame) -> go.Figure:
    """Replica count per deployment after each scaling action, as steps over time."""
    fig = go.Figure()
    acted = history[history["action"].isin(["up", "down"])] if not history.empty else history
    for deployment, rows in (acted.sort_values("time").groupby("deployment")
                             if not acted.empty else []):
        first = rows.iloc[0]
        times = [first["time"], *rows["time"]]
        counts = [first["before"], *rows["after"]]
        fig.add_scatter(x=times, y=counts, mode="lines+markers", name=str(deployment),
                        line={"shape": "hv", "width": 2})
    fig.update_layout(title="Replicas after each scaling action", height=300,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, yaxis_title="replicas",
                      legend={"orientation": "h"})
    return fig


# Columns of the status frame that only the ``slo`` policy fills.
SLO_COLUMNS = ("policy", "SLO", "SLO met", "forecast /s", "burst ×", "planned /s",
               "sustains /s", "forecast", "why this GPU type")
_PER_TYPE = "per replica on "


def without_slo(frame: pd.DataFrame) -> pd.DataFrame:
    """The status frame without the ``slo`` policy's columns (shown in their own table)."""
    drop = [c for c in frame.columns if c in SLO_COLUMNS or str(c).startswith(_PER_TYPE)]
    return frame.drop(columns=drop)


def slo_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``slo`` deployments' forecast, capacity per GPU type and choice of type."""
    if frame.empty or "policy" not in frame:
        return pd.DataFrame()
    mine = frame[frame["policy"] == "slo"]
    per_type = [c for c in frame.columns if str(c).startswith(_PER_TYPE)]
    keep = ["deployment", "replicas", "SLO", "SLO met", "forecast /s", "burst ×",
            "planned /s", "sustains /s", *per_type, "why this GPU type", "forecast"]
    return mine[[c for c in keep if c in mine]].reset_index(drop=True)


def capacity_figure(frame: pd.DataFrame) -> go.Figure:
    """Requests/s one more replica sustains within its SLO, per deployment and GPU type."""
    fig = go.Figure()
    rows = slo_rows(frame)
    for column in [c for c in rows.columns if str(c).startswith(_PER_TYPE)]:
        fig.add_bar(x=rows["deployment"], y=rows[column],
                    name=str(column).removeprefix(_PER_TYPE).removesuffix(" /s"))
    fig.update_layout(title="Capacity per replica within the SLO, by GPU type", height=300,
                      barmode="group", margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis_title="requests/s", legend={"orientation": "h"})
    return fig
