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

from collections import Counter
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
        snap = self.ctx.snapshot
        n_filters = len(self.filters)
        reached = np.where(self.first_failure == -1, n_filters + 1, self.first_failure)
        per_node = np.full(len(snap.node_names), n_filters, dtype=np.int64)
        seen = np.zeros(len(snap.node_names), dtype=bool)
        seen[snap.node_idx] = True
        per_node[seen] = -1
        np.maximum.at(per_node, snap.node_idx, reached)
        per_node[per_node == n_filters + 1] = -1
        return dict(zip(snap.node_names, per_node.tolist(), strict=True))

    def phrase(self, verdict: int) -> str:
        """What a node with this verdict is counted under."""
        if verdict >= len(self.filters):
            return NO_GPUS
        return self.filters[verdict].phrase(self.ctx)

    @cached_property
    def nodes_line(self) -> str:
        """"5/12 nodes fit" or "0/12 nodes fit: 7 insufficient GPU memory, …"."""
        verdicts = self.node_verdicts
        fit = sum(1 for v in verdicts.values() if v == -1)
        head = f"{fit}/{len(verdicts)} nodes fit"
        counts = Counter(v for v in verdicts.values() if v != -1)
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
