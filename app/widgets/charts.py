"""Time-series and fleet figures for the Overview and Fleet pages."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.mps.layout import GpuLayout

QPS_BANDS = ((0, 50, "rgba(84,162,75,0.12)", "safe"),
             (50, 100, "rgba(238,202,59,0.15)", "caution"),
             (100, 200, "rgba(245,133,24,0.15)", "high risk"),
             (200, 10_000, "rgba(228,87,86,0.15)", "do not update"))


def series_figure(frame: pd.DataFrame, *, title: str, unit: str, qps_bands: bool = False,
                  y_range: tuple[float, float] | None = None) -> go.Figure:
    """One series as a line, with SPEC's QPS risk bands behind it when ``qps_bands``.
    Built in one constructor call (layout, shapes and their labels at once): Plotly
    validates each ``add_*``/``update_*`` call on its own, three times the work."""
    top = float(frame["value"].max()) if not frame.empty else 1.0
    shapes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    if qps_bands:
        for lo, hi, colour, name in QPS_BANDS:
            if lo <= max(top * 1.1, 60):
                y1 = min(hi, max(top * 1.15, 60))
                shapes.append({"type": "rect", "xref": "x domain", "yref": "y", "x0": 0,
                               "x1": 1, "y0": lo, "y1": y1, "fillcolor": colour,
                               "line": {"width": 0}})
                notes.append({"text": name, "xref": "x domain", "yref": "y", "x": 0,
                              "y": y1, "xanchor": "left", "yanchor": "top",
                              "showarrow": False})
    yaxis: dict[str, Any] = {"title": {"text": unit}}
    if y_range is not None:
        yaxis["range"] = list(y_range)
    return go.Figure(
        data=[go.Scatter(x=frame.get("time"), y=frame.get("value"), mode="lines", name=title,
                         line={"width": 2})],
        layout={"title": {"text": title}, "height": 260, "showlegend": False,
                "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "yaxis": yaxis,
                "shapes": shapes, "annotations": notes})


def fleet_layout_figure(layouts: list[GpuLayout]) -> go.Figure:
    """One horizontal stacked bar per GPU: each MPS client's thread share, then free."""
    fig = go.Figure()
    labels = [f"{lay.key} ({lay.gpu_type})" for lay in layouts]
    depth = max((len(lay.slices) for lay in layouts), default=0)
    for i in range(depth):
        x, text = [], []
        for lay in layouts:
            sl = lay.slices[i] if i < len(lay.slices) else None
            x.append(sl.thread_pct if sl else 0)
            text.append(f"{sl.model or sl.owner} {sl.thread_pct}% · "
                        f"{sl.memory_mib / 1024:.1f} GiB" if sl else "")
        fig.add_bar(y=labels, x=x, orientation="h", text=text, textposition="inside",
                    insidetextanchor="middle", showlegend=False, hoverinfo="text",
                    marker={"line": {"width": 1, "color": "white"}})
    fig.add_bar(y=labels, x=[lay.share_free_pct for lay in layouts], orientation="h",
                name="free", marker={"color": "#E8E8E8"}, hoverinfo="x",
                text=[f"free {lay.share_free_pct}%" if lay.share_free_pct else ""
                      for lay in layouts], textposition="inside")
    fig.update_layout(barmode="stack", height=60 + 34 * len(layouts),
                      margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"range": [0, 100], "title": "SM threads (%)"},
                      yaxis={"autorange": "reversed"}, title="MPS layout per GPU")
    return fig
