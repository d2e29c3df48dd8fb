"""Score plugins: the five components of SPEC §3.3 step 4, each on 0–10.

A plugin that depends only on the GPU type (efficiency, affinity, power
bonus) scores the catalog's handful of types once; the framework gathers the
weighted per-type sum onto the rows in one operation. Plugins that depend on
the GPU's state (utilization headroom, MPS fit) score the rows directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.catalog import Catalog
from core.classify import ClassPolicy
from core.model import Priority
from core.placement.snapshot import Columns


@dataclass(frozen=True, slots=True)
class ScoreContext:
    catalog: Catalog
    type_names: tuple[str, ...]
    policy: ClassPolicy
    priority: Priority


class ScorePlugin(Protocol):
    # The component's name; it is also the key of its weight.
    name: str
    by_type: bool

    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        """Scores per GPU type (only for ``by_type`` plugins)."""
        ...

    def row_scores(self, cols: Columns, share_pct: int) -> np.ndarray:
        """Scores per row (only for plugins that are not ``by_type``)."""
        ...


class Efficiency:
    """10 × (TOPS/W of the GPU type) / (best TOPS/W in the catalog)."""

    name = "efficiency"
    by_type = True

    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        best = ctx.catalog.best_tops_per_watt
        return np.array([10.0 * ctx.catalog.tops_per_watt(t) / best for t in ctx.type_names])


class Affinity:
    """10 on the class's preferred type, 5 on a type merely able to run it."""

    name = "affinity"
    by_type = True

    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        allowed = ctx.policy.allowed_types
        return np.array([
            10.0 if t == ctx.policy.preferred_type else (5.0 if not allowed or t in allowed
                                                         else 0.0)
            for t in ctx.type_names
        ])


class PowerBonus:
    """HIGH/CRITICAL favour the fast GPU, LOW the frugal one, MEDIUM is neutral (5)."""

    name = "power"
    by_type = True

    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        cat = ctx.catalog
        if ctx.priority in (Priority.HIGH, Priority.CRITICAL):
            return np.array([10.0 * cat.throughput(t) / cat.max_throughput
                             for t in ctx.type_names])
        if ctx.priority is Priority.LOW:
            return np.array([10.0 * (1.0 - cat[t].tdp_w / cat.max_tdp_w)
                             for t in ctx.type_names])
        return np.full(len(ctx.type_names), 5.0)


class UtilizationHeadroom:
    """10 × (1 − current utilization)."""

    name = "utilization"
    by_type = False

    def row_scores(self, cols: Columns, share_pct: int) -> np.ndarray:
        return cols.util_score


class MpsFit:
    """10 × (share requested) / (free share before placing): a perfect fit scores 10."""

    name = "mps"
    by_type = False

    def row_scores(self, cols: Columns, share_pct: int) -> np.ndarray:
        return share_pct * cols.inv_share_free


DEFAULT_SCORERS: tuple[ScorePlugin, ...] = (
    Efficiency(), Affinity(), UtilizationHeadroom(), PowerBonus(), MpsFit(),
)
