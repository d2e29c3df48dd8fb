"""The Filter stage's status and the PostFilter: which GPUs fit, why the others do not,
and what would make the request fit.

``run_filters`` runs any number of filter plugins and combines their masks; everything
else here is lazy and built from those masks only when a caller asks: the first failing
filter per row (vectorized), the verdict per node, the "0/N nodes fit: 7 insufficient
GPU memory, 5 utilization ≥ 90 %" line and the recommendations. Every word of those
comes from the plugins themselves (``reason``, ``phrase``, ``recommend``), so a new
filter plugin explains itself without any change here.

Invariants: a row fits exactly when every mask passes it; a rejected row is reported
under the first filter in pipeline order that rejected it; a node fits when one of its
GPUs does, and is otherwise reported under the furthest filter any of its GPUs reached
(a node without GPUs under "without GPUs").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from core.placement.filters import FilterContext, FilterPlugin, combine_masks, first_failures

NO_GPUS = "without GPUs"


@dataclass(eq=False)
class FilterStatus:
    """The outcome of the Filter stage for one request over one snapshot."""

    ctx: FilterContext
    filters: tuple[FilterPlugin, ...]
    masks: tuple[np.ndarray | None, ...]
    ok: np.ndarray

    @property
    def gpus_fit(self) -> int:
        return int(np.count_nonzero(self.ok))

    @cached_property
    def first_failure(self) -> np.ndarray:
        """Per row: index of the first filter that rejected it, or -1 when it fits."""
        return first_failures(self.masks, self.ok)

    def failed_filter(self, row: int) -> FilterPlugin | None:
        fail = int(self.first_failure[row])
        return None if fail == -1 else self.filters[fail]

    def reason(self, row: int) -> str | None:
        """Why ``row`` cannot take the request, in its first failing filter's words."""
        f = self.failed_filter(row)
        return None if f is None else f.reason(self.ctx, row)

    @cached_property
    def node_verdicts(self) -> dict[str, int]:
        """Per node: -1 when some GPU fits, else the furthest filter any of its GPUs reached.

        A node without GPUs gets ``len(filters)`` ("without GPUs").
        """
        return dict(zip(self.ctx.snapshot.node_names, self._per_node.tolist(), strict=True))

    @cached_property
    def _per_node(self) -> np.ndarray:
        """``node_verdicts`` as an array in node order. Rows are grouped by node, so the
        furthest filter per node is one ``maximum.reduceat`` over the rows."""
        snap = self.ctx.snapshot
        n_filters = len(self.filters)
        per_node = np.full(len(snap.node_names), n_filters, dtype=np.int64)
        if snap.size:
            reached = np.where(self.first_failure == -1, n_filters + 1, self.first_failure)
            starts, nodes = snap.node_groups
            per_node[nodes] = np.maximum.reduceat(reached, starts)
        per_node[per_node == n_filters + 1] = -1
        return per_node

    def phrase(self, verdict: int) -> str:
        """What a node with this verdict is counted under."""
        if verdict >= len(self.filters):
            return NO_GPUS
        return self.filters[verdict].phrase(self.ctx)

    @cached_property
    def nodes_line(self) -> str:
        """"5/12 nodes fit" or "0/12 nodes fit: 7 insufficient GPU memory, …"."""
        per_node = self._per_node
        fit = int(np.count_nonzero(per_node == -1))
        head = f"{fit}/{per_node.size} nodes fit"
        # Nodes per verdict: one ``bincount`` over the small verdict range (0 … number of
        # filters), not a sort of every node's verdict.
        tally = np.bincount(per_node[per_node != -1], minlength=len(self.filters) + 1)
        present = np.flatnonzero(tally).tolist()
        counts = dict(zip(present, tally[present].tolist(), strict=True))
        parts = [f"{n} {self.phrase(v)}" for v, n in
                 sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return f"{head}: {', '.join(parts)}" if parts else head

    @cached_property
    def recommendations(self) -> list[str]:
        """PostFilter: for each filter that rejected some GPU first, in pipeline order,
        what would make those GPUs fit."""
        first = self.first_failure
        out: list[str] = []
        for i in np.unique(first[first >= 0]).tolist():
            out.extend(self.filters[i].recommend(self.ctx, np.flatnonzero(first == i)))
        return out


def run_filters(filters: Sequence[FilterPlugin], ctx: FilterContext) -> FilterStatus:
    """The Filter stage: every plugin's mask, combined into the rows that pass them all."""
    plugins = filters if isinstance(filters, tuple) else tuple(filters)
    masks = tuple([f.mask(ctx) for f in plugins])
    return FilterStatus(ctx, plugins, masks, combine_masks(masks, ctx.snapshot.size))
