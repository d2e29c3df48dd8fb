"""Figures for placement decisions: the score heat-map and MPS layout bars."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.mps.layout import GpuLayout
from core.placement.matrix import DecisionMatrix

CHOSEN_MARK = "★ "
_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B",
            "#9D755D", "#FF9DA6", "#BAB0AC")


def matrix_frame(matrix: DecisionMatrix) -> pd.DataFrame:
    """The matrix as a table: one row per GPU, best first, rejected rows with reasons."""
    frame = pd.DataFrame(matrix.records())
    frame.insert(0, "", ["★" if c else "" for c in frame["chosen"]])
    return frame.drop(columns=["chosen"])


def score_heatmap(matrix: DecisionMatrix, *, max_rows: int = 30) -> go.Figure:
    """Fitting GPUs × components (and the weighted total), chosen GPU starred."""
    rows = [r for r in matrix.ranked() if r.fits][:max_rows]
    columns = [f"{c}<br>×{matrix.weights[c]:.2f}" for c in matrix.components] + ["total"]
    z = [[r.scores[c] for c in matrix.components] + [r.total] for r in rows]  # type: ignore[index]
    labels = [f"{CHOSEN_MARK if r.chosen else ''}#{r.rank} {r.key} ({r.gpu_type})" for r in rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=labels, zmin=0, zmax=10, colorscale="Viridis",
        text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="%{y}<br>%{x}: %{z:.2f}<extra></extra>",
        colorbar={"title": "score"},
    ))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=max(220, 60 + 34 * len(rows)), margin={"l": 10, "r": 10, "t": 30,
                                                                     "b": 10},
                      title="Score matrix (0–10) of the GPUs that pass every filter")
    return fig


def layout_bars(before: GpuLayout, after: GpuLayout, *, new_owner: str) -> go.Figure:
    """Before/after stacked bars of SM-thread share and memory for one GPU."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("SM threads (%)", "GPU memory (GiB)"),
                        horizontal_spacing=0.12)
    owners = list(dict.fromkeys(s.owner for s in (*before.slices, *after.slices)))
    colours = {o: _PALETTE[i % len(_PALETTE)] for i, o in enumerate(owners)}
    stages = ("before", "after")
    for owner in owners:
        threads = [next((s.thread_pct for s in lay.slices if s.owner == owner), 0)
                   for lay in (before, after)]
        memory = [next((s.memory_mib for s in lay.slices if s.owner == owner), 0) / 1024
                  for lay in (before, after)]
        name = f"{owner} (new)" if owner == new_owner else owner
        pattern = {"shape": "/"} if owner == new_owner else {}
        fig.add_bar(x=threads, y=stages, orientation="h", name=name, legendgroup=owner,
                    marker={"color": colours[owner], "pattern": pattern}, row=1, col=1)
        fig.add_bar(x=memory, y=stages, orientation="h", name=name, legendgroup=owner,
                    showlegend=False, marker={"color": colours[owner], "pattern": pattern},
                    row=1, col=2)
    free_threads = [lay.share_free_pct for lay in (before, after)]
    free_mem = [lay.memory_free_mib / 1024 for lay in (before, after)]
    fig.add_bar(x=free_threads, y=stages, orientation="h", name="free", legendgroup="free",
                marker={"color": "#E8E8E8"}, row=1, col=1)
    fig.add_bar(x=free_mem, y=stages, orientation="h", name="free", legendgroup="free",
                showlegend=False, marker={"color": "#E8E8E8"}, row=1, col=2)
    fig.update_xaxes(range=[0, 100], row=1, col=1)
    fig.update_xaxes(range=[0, math.ceil(before.memory_total_mib / 1024)], row=1, col=2)
    fig.update_layout(barmode="stack", height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title=f"MPS layout of {before.key} ({before.gpu_type})")
    return fig
