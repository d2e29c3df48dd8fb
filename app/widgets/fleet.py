"""Widgets of the Fleet page: summary, filters, heat map, busiest GPUs, a paged table and
MPS layout pictures for chosen nodes only, sized to stay quick at 5,000 GPUs."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import fleet_view as fv
from app import services
from app.widgets.charts import fleet_layout_figure
from core.model import Node
from core.mps.layout import GpuLayout

# Widget keys (the page's prefix), constant so that a widget keeps its state across reruns.
TYPES_KEY = "fleet.filter.types"
POOLS_KEY = "fleet.filter.pools"
STATES_KEY = "fleet.filter.states"
SEARCH_KEY = "fleet.search"
PAGE_KEY = "fleet.page"
LAYOUT_NODES_KEY = "fleet.layout_nodes"
HEATMAP_KEY = "fleet.heatmap"
LAYOUTS_KEY = "fleet.layouts"
REFRESH_KEY = "fleet.refresh"
READ_KEY = "fleet._read"  # the last read of the cluster's nodes: (monotonic s, nodes, frame)
READ_MAX_AGE_S = 1.0

NODES_PER_PAGE = 25  # 200 GPU rows at 8 GPUs a node
HEATMAP_MAX_ROWS = 200
BUSIEST = 10
MAX_LAYOUT_NODES = 8
# With no node chosen, a search that finds this many nodes or fewer shows their layouts.
SEARCH_LAYOUT_NODES = 4
NAMES_LISTED = 10


def read_fleet() -> tuple[tuple[Node, ...], pd.DataFrame]:
    """The cluster's nodes and their GPU rows, read at most once a second per session:
    one run of the page (summary, details, the cordon form) reads a 5,000-GPU fleet once,
    not three times. Raises ``services.Unavailable`` as ``services.fleet_nodes`` does."""
    now = time.monotonic()
    last = st.session_state.get(READ_KEY)
    if last is not None and now - last[0] < READ_MAX_AGE_S:
        return last[1], last[2]
    nodes = services.nodes_this_run()  # the embedded twin's read is shared for a few s
    frame = last[2] if last is not None and last[1] is nodes else fv.gpu_frame(nodes)
    st.session_state[READ_KEY] = (now, nodes, frame)
    return nodes, frame


def forget_read() -> None:
    """A whole run of the page, or an action that changed the cluster: the next read asks
    it again (an action also ends the twin's shared read)."""
    services.new_page_run()
    st.session_state.pop(READ_KEY, None)


def fleet_metrics(frame: pd.DataFrame) -> None:
    nodes = frame["node"].nunique() if not frame.empty else 0
    cordoned = frame.loc[~frame["schedulable"].astype(bool), "node"].nunique()
    unhealthy = int((~frame["healthy"].astype(bool)).sum())
    c = st.columns(5)
    c[0].metric("Nodes", nodes)
    c[1].metric("GPUs", len(frame))
    c[2].metric("Cordoned", cordoned)
    c[3].metric("Unhealthy GPUs", unhealthy)
    mean = float(frame["utilization"].mean()) if not frame.empty else 0.0
    c[4].metric("Mean utilization", f"{mean:.0%}")


def summary_table(frame: pd.DataFrame) -> None:
    st.dataframe(fv.summary(frame), hide_index=True, width="stretch", column_config={
        "mean utilization": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                            format="percent"),
    })


def filter_controls(frame: pd.DataFrame) -> fv.FleetFilter:
    c = st.columns([1, 1, 1, 2])
    types = c[0].multiselect("GPU type", sorted(set(frame["type"])), key=TYPES_KEY,
                             placeholder="all")
    pools = c[1].multiselect("Pool", sorted(set(frame["pool"])), key=POOLS_KEY,
                             placeholder="all")
    states = c[2].multiselect("State", [s.value for s in fv.NodeState], key=STATES_KEY,
                              placeholder="any")
    search = c[3].text_input("Search nodes by name", key=SEARCH_KEY,
                             placeholder="part of a node's name, e.g. h100-1")
    return fv.FleetFilter(gpu_types=tuple(types), pools=tuple(pools),
                          states=tuple(fv.NodeState(s) for s in states), search=search)


def matches_caption(frame: pd.DataFrame, flt: fv.FleetFilter) -> None:
    names = fv.node_names(frame)
    if not flt.search.strip():
        st.caption(f"{len(names)} nodes, {len(frame)} GPUs match the filter.")
        return
    listed = ", ".join(names[:NAMES_LISTED]) + (" …" if len(names) > NAMES_LISTED else "")
    if names:
        st.caption(f"{len(names)} nodes match “{flt.search.strip()}”: {listed}")
    else:
        st.caption(f"No node's name contains “{flt.search.strip()}”.")


def heatmap_figure(grid: fv.HeatGrid) -> go.Figure:
    fig = go.Figure(go.Heatmap(
        z=[list(r) for r in grid.values], x=[f"gpu{g}" for g in grid.gpus],
        y=list(grid.rows), zmin=0.0, zmax=1.0, colorscale="YlOrRd",
        colorbar={"title": "util", "tickformat": ".0%"},
        hovertemplate="%{y} %{x}: %{z:.0%}<extra></extra>"))
    title = "GPU utilization"
    if grid.nodes_per_row > 1:
        title += f" (each row: the mean of {grid.nodes_per_row} nodes)"
    fig.update_layout(title=title, height=min(120 + 14 * len(grid.rows), 900),
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis={"autorange": "reversed", "type": "category"})
    return fig


def heatmap(frame: pd.DataFrame) -> None:
    grid = fv.heat_grid(frame, max_rows=HEATMAP_MAX_ROWS)
    if not grid.rows:
        st.info("No GPU matches the filter.")
        return
    st.plotly_chart(heatmap_figure(grid), width="stretch", key=HEATMAP_KEY)


def busiest_table(frame: pd.DataFrame) -> None:
    st.dataframe(fv.top_gpus(frame, BUSIEST), hide_index=True, width="stretch",
                 column_config={
        "utilization": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                       format="percent"),
        "power W": st.column_config.NumberColumn(format="%.0f"),
    })


def paged_table(frame: pd.DataFrame) -> fv.TablePage:
    """The filtered table, one page of nodes at a time, with a page selector."""
    pages = fv.page_count(len(fv.node_names(frame)), NODES_PER_PAGE)
    # A narrower filter may leave fewer pages than the one chosen: go to the last.
    if int(st.session_state.get(PAGE_KEY, 1)) > pages:
        st.session_state[PAGE_KEY] = pages
    c = st.columns([1, 4])
    number = c[0].number_input("Page", min_value=1, max_value=pages, step=1, key=PAGE_KEY)
    page = fv.paginate(frame, page=int(number), nodes_per_page=NODES_PER_PAGE)
    c[1].caption(f"Page {page.number} of {page.pages}: {len(page.nodes)} nodes, "
                 f"{len(page.rows)} GPUs ({NODES_PER_PAGE} nodes a page).")
    st.dataframe(page.rows, hide_index=True, width="stretch",
                 height=min(36 * (len(page.rows) + 1) + 4, 620), column_config={
        "utilization": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                       format="percent"),
        "power W": st.column_config.NumberColumn(format="%.0f"),
    })
    return page


def layout_pictures(nodes: Sequence[Node], matched: Sequence[str], *, searched: bool) -> None:
    """MPS layout pictures of the nodes chosen (or, with none chosen, of a search's few
    results), never of the whole fleet."""
    names = [n.name for n in nodes]
    chosen = st.multiselect("Show the MPS layout of", names, key=LAYOUT_NODES_KEY,
                            max_selections=MAX_LAYOUT_NODES,
                            placeholder=f"choose up to {MAX_LAYOUT_NODES} nodes")
    shown = list(chosen)
    if not shown and searched and 0 < len(matched) <= SEARCH_LAYOUT_NODES:
        shown = list(matched)
    if not shown:
        st.caption("Choose nodes above (or search for a few) to see their GPUs' MPS layout.")
        return
    wanted = set(shown)
    layouts = [GpuLayout.from_gpu(n.name, g) for n in nodes if n.name in wanted for g in n.gpus]
    st.plotly_chart(fleet_layout_figure(layouts), width="stretch", key=LAYOUTS_KEY)
