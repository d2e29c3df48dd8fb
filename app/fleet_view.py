"""The Fleet page's data, shaped for a fleet of any size (no Streamlit here).

Why: at 5,000 GPUs a table row per GPU and a layout picture per GPU take tens of
seconds to draw in a browser. The page shows instead a summary per pool and GPU
type, a heat map capped in rows, the busiest GPUs, and one page of the filtered
table at a time; everything here is a pure function of the nodes and the filter.
Invariants: a filter never adds rows; pages partition the filtered nodes (every
node on exactly one page, GPUs of a node never split across pages); a heat map
grid has at most ``max_rows`` rows, whatever the fleet's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import pandas as pd

from core.model import Node

# Node labels that name a node's pool, the first present wins: this project's own, then
# those of the managed Kubernetes services and of Karpenter. Without one, the pool is the
# node's GPU type.
POOL_LABELS = (
    "gpu-scheduler.io/pool",
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
    "karpenter.sh/nodepool",
)
GPU_COLUMNS = ("node", "gpu", "type", "pool", "ready", "schedulable", "healthy",
               "utilization", "power W", "memory used GiB", "memory total GiB",
               "MPS clients", "threads used %", "models")
SUMMARY_COLUMNS = ("pool", "type", "nodes", "GPUs", "cordoned", "unhealthy GPUs",
                   "not ready", "mean utilization", "power kW", "MPS clients",
                   "threads used (mean %)")
BUSIEST_COLUMNS = ("node", "gpu", "type", "pool", "utilization", "power W", "MPS clients",
                   "models")


class NodeState(StrEnum):
    """The states the page filters on; a GPU row matches when any chosen one holds."""

    CORDONED = "cordoned"
    UNHEALTHY = "unhealthy"
    NOT_READY = "not ready"


def pool_of(node: Node) -> str:
    """The node's pool label, else its GPU type (the product label, else its first GPU's)."""
    for label in POOL_LABELS:
        value = node.labels.get(label, "").strip()
        if value:
            return value
    product = node.labels.get("nvidia.com/gpu.product", "").strip()
    if product:
        return product
    return node.gpus[0].gpu_type if node.gpus else "(no GPU)"


def gpu_frame(nodes: Iterable[Node]) -> pd.DataFrame:
    """One row per GPU, in the cluster's node order then GPU index."""
    rows = []
    for node in nodes:
        pool = pool_of(node)
        for gpu in node.gpus:
            rows.append((
                node.name, gpu.index, gpu.gpu_type, pool, node.ready, node.schedulable,
                gpu.healthy, gpu.utilization, gpu.power_w,
                round(gpu.memory_used_mib / 1024, 1), round(gpu.memory_total_mib / 1024, 1),
                len(gpu.slices), gpu.share_used_pct,
                ", ".join(s.model or s.owner for s in gpu.slices),
            ))
    return pd.DataFrame.from_records(rows, columns=list(GPU_COLUMNS))


@dataclass(frozen=True, slots=True)
class FleetFilter:
    """What the person chose; an empty choice means "all"."""

    gpu_types: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    states: tuple[NodeState, ...] = ()
    search: str = ""


def filter_gpus(frame: pd.DataFrame, flt: FleetFilter) -> pd.DataFrame:
    """The GPU rows that match every part of the filter (states: any of those chosen)."""
    keep = pd.Series(True, index=frame.index)
    if flt.gpu_types:
        keep &= frame["type"].isin(flt.gpu_types)
    if flt.pools:
        keep &= frame["pool"].isin(flt.pools)
    if flt.states:
        any_state = pd.Series(False, index=frame.index)
        for state in flt.states:
            if state is NodeState.CORDONED:
                any_state |= ~frame["schedulable"].astype(bool)
            elif state is NodeState.UNHEALTHY:
                any_state |= ~frame["healthy"].astype(bool)
            else:
                any_state |= ~frame["ready"].astype(bool)
        keep &= any_state
    needle = flt.search.strip().lower()
    if needle:
        keep &= frame["node"].str.lower().str.contains(needle, regex=False)
    return frame[keep]


def node_names(frame: pd.DataFrame) -> list[str]:
    """The nodes of ``frame``, each once, in the order they first appear."""
    return list(dict.fromkeys(frame["node"]))


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pool and GPU type: counts, mean utilization, power, MPS clients, threads used."""
    if frame.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    work = frame.assign(
        cordoned_node=frame["node"].where(~frame["schedulable"].astype(bool)),
        not_ready_node=frame["node"].where(~frame["ready"].astype(bool)),
        unhealthy=~frame["healthy"].astype(bool),
    )
    out = work.groupby(["pool", "type"], sort=True).agg(
        nodes=("node", "nunique"),
        GPUs=("gpu", "size"),
        cordoned=("cordoned_node", "nunique"),
        unhealthy_gpus=("unhealthy", "sum"),
        not_ready=("not_ready_node", "nunique"),
        mean_utilization=("utilization", "mean"),
        power_w=("power W", "sum"),
        clients=("MPS clients", "sum"),
        threads=("threads used %", "mean"),
    ).reset_index()
    out["power_w"] = (out["power_w"] / 1000).round(2)
    out["threads"] = out["threads"].round(1)
    out.columns = list(SUMMARY_COLUMNS)
    return out.astype({"unhealthy GPUs": int, "MPS clients": int})


def top_gpus(frame: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` GPUs with the highest utilization (ties by node name, then GPU index)."""
    ranked = frame.sort_values(["utilization", "node", "gpu"], ascending=[False, True, True],
                               kind="mergesort")
    return ranked.head(max(n, 0))[list(BUSIEST_COLUMNS)].reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class TablePage:
    """One page of the filtered table: its rows, its number (from 1) and the page count."""

    rows: pd.DataFrame
    number: int
    pages: int
    nodes: tuple[str, ...]


def page_count(node_total: int, nodes_per_page: int) -> int:
    return max(1, math.ceil(node_total / max(nodes_per_page, 1)))


def paginate(frame: pd.DataFrame, *, page: int, nodes_per_page: int) -> TablePage:
    """The GPU rows of the ``page``-th group of ``nodes_per_page`` nodes (clamped to the
    pages there are), so a node's GPUs are never split across pages."""
    names = node_names(frame)
    pages = page_count(len(names), nodes_per_page)
    number = min(max(page, 1), pages)
    size = max(nodes_per_page, 1)
    chosen = tuple(names[(number - 1) * size: number * size])
    rows = frame[frame["node"].isin(chosen)].reset_index(drop=True)
    return TablePage(rows=rows, number=number, pages=pages, nodes=chosen)


@dataclass(frozen=True, slots=True)
class HeatGrid:
    """Utilization per row (a node, or a run of nodes averaged) and GPU index."""

    rows: tuple[str, ...]
    gpus: tuple[int, ...]
    values: tuple[tuple[float | None, ...], ...]
    nodes_per_row: int


def heat_grid(frame: pd.DataFrame, *, max_rows: int = 200) -> HeatGrid:
    """Nodes × GPU index of utilization; over ``max_rows`` nodes, consecutive nodes are
    averaged into ``max_rows`` rows or fewer (a row is labelled by its first and last)."""
    names = node_names(frame)
    if not names:
        return HeatGrid(rows=(), gpus=(), values=(), nodes_per_row=1)
    wide = frame.pivot_table(index="node", columns="gpu", values="utilization",
                             aggfunc="mean", sort=False).reindex(names)
    gpus = tuple(int(g) for g in sorted(wide.columns))
    wide = wide[list(gpus)]
    per_row = max(1, math.ceil(len(names) / max(max_rows, 1)))
    if per_row > 1:
        groups = [i // per_row for i in range(len(names))]
        labels = _group_labels(names, per_row)
        wide = wide.groupby(groups, sort=True).mean()
        wide.index = labels
    values = tuple(tuple(None if pd.isna(v) else round(float(v), 3) for v in row)
                   for row in wide.to_numpy())
    return HeatGrid(rows=tuple(str(i) for i in wide.index), gpus=gpus, values=values,
                    nodes_per_row=per_row)


def _group_labels(names: Sequence[str], per_row: int) -> list[str]:
    labels = []
    for start in range(0, len(names), per_row):
        chunk = names[start:start + per_row]
        labels.append(chunk[0] if len(chunk) == 1 else f"{chunk[0]} … {chunk[-1]}")
    return labels


def refresh_interval_s(gpu_total: int) -> float | None:
    """How often the page's detailed part refreshes by itself: every 5 s for a small
    fleet, less often as it grows, and not at all over 2,000 GPUs (the summary above it
    still refreshes every 5 s; a person reruns the rest by acting on it)."""
    if gpu_total <= 200:
        return 5.0
    if gpu_total <= 2000:
        return 30.0
    return None
