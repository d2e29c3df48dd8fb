"""Time-series and fleet figures for the Overview and Fleet pages."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from core.mps.layout import GpuLayout

QPS_BANDS = ((0, 50, "rgba(84,162,75,0.12)", "safe"),
             (50, 100, "rgba(238,202,59,0.15)", "caution"),
             (100, 200, "rgba(245,133,24,0.15)", "high risk"),
             (200, 10_000, "rgba(228,87,86,0.15)", "do not update"))


def series_figure(frame: pd.DataFrame, *, title: str, unit: str, qps_bands: bool = False,
                  y_range: tuple[float, float] | None = None) -> go.Figure:
    fig = go.Figure()
    top = float(frame["value"].max()) if not frame.empty else 1.0
    if qps_bands:
        for lo, hi, colour, name in QPS_BANDS:
            if lo <= max(top * 1.1, 60):
                fig.add_hrect(y0=lo, y1=min(hi, max(top * 1.15, 60)), fillcolor=colour,
                              line_width=0, annotation_text=name,
                              annotation_position="top left")
    fig.add_scatter(x=frame.get("time"), y=frame.get("value"), mode="lines", name=title,
                    line={"width": 2})
    fig.update_layout(title=title, height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis_title=unit, showlegend=False)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


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
