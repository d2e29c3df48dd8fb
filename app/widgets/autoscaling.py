"""Figures for the Autoscaling page."""

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
