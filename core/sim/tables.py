"""The twin's static tables: one row per GPU, built once from the fleet and the catalog.

Why: every part of the twin (scheduling, the traffic engine, telemetry) looks
GPUs up by row; holding the per-GPU and per-type facts as columns lets the
engine work on whole arrays. Invariants: rows never change after
construction (a GPU's node, index, type and memory are fixed), node
names are unique, and ``row_of`` is the inverse of ``(node[row], index[row])``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from core.catalog import Catalog
from core.errors import ValidationError
from core.model import Gpu, Node
from core.sim.faults import FaultEffects


@dataclass(frozen=True, eq=False)
class GpuTable:
    """The fleet's GPUs as columns (row i is the i-th GPU of the nodes in fleet order)."""

    node_names: tuple[str, ...]
    node_labels: Mapping[str, Mapping[str, str]]
    row_of: Mapping[tuple[str, int], int]
    rows_of_node: Mapping[str, tuple[int, ...]]
    node: tuple[str, ...]
    index: tuple[int, ...]
    gpu_type: tuple[str, ...]
    uuid: tuple[str, ...]
    mem_total: np.ndarray  # MiB
    other_mem: np.ndarray  # MiB held by processes outside the twin's pods
    idle_w: np.ndarray
    tdp_w: np.ndarray
    tops: np.ndarray  # the catalog's throughput figure
    # The readings the fleet was built with (the engine's starting state).
    initial_util: np.ndarray
    initial_power: np.ndarray

    @property
    def count(self) -> int:
        return len(self.node)

    @classmethod
    def build(cls, fleet: Sequence[Node], catalog: Catalog) -> GpuTable:
        names = tuple(n.name for n in fleet)
        if len(set(names)) != len(names):
            raise ValidationError("fleet", "node names must be unique")
        rows: list[tuple[Node, Gpu]] = [(n, g) for n in fleet for g in n.gpus]
        types = [catalog[g.gpu_type] for _, g in rows]
        idle = np.array([t.idle_w for t in types])
        by_node: dict[str, list[int]] = {name: [] for name in names}
        for i, (n, _) in enumerate(rows):
            by_node[n.name].append(i)
        return cls(
            node_names=names,
            node_labels=MappingProxyType(
                {n.name: MappingProxyType(dict(n.labels)) for n in fleet}),
            row_of=MappingProxyType({(n.name, g.index): i for i, (n, g) in enumerate(rows)}),
            rows_of_node=MappingProxyType({k: tuple(v) for k, v in by_node.items()}),
            node=tuple(n.name for n, _ in rows),
            index=tuple(g.index for _, g in rows),
            gpu_type=tuple(g.gpu_type for _, g in rows),
            uuid=tuple(g.uuid or f"GPU-{n.name}-{g.index}" for n, g in rows),
            mem_total=np.array([g.memory_total_mib for _, g in rows], dtype=np.int64),
            other_mem=np.array([g.other_memory_mib for _, g in rows], dtype=np.int64),
            idle_w=idle,
            tdp_w=np.array([t.tdp_w for t in types]),
            tops=np.array([catalog.throughput(g.gpu_type) for _, g in rows]),
            initial_util=np.array([g.utilization for _, g in rows]),
            initial_power=np.array([g.power_w or float(idle[i])
                                    for i, (_, g) in enumerate(rows)]),
        )

    def failed_rows(self, eff: FaultEffects) -> np.ndarray:
        """Rows of the GPUs a fault has taken out (they draw nothing, report nothing)."""
        failed = np.zeros(self.count, dtype=bool)
        for key in eff.failed_gpus:
            row = self.row_of.get(key)
            if row is not None:
                failed[row] = True
        return failed
