"""Score plugins: the five components of SPEC §3.3 step 4, and the Normalize stage.

Two kinds of plugin, because they cost differently:
- a ``TypeScorePlugin`` depends only on the GPU type (efficiency, affinity, power
  bonus): it scores the catalog's handful of types once per (class, priority), and
  the framework gathers the weighted per-type sum onto the rows in one operation;
- a ``RowScorePlugin`` depends on each GPU's state (utilization headroom, MPS fit):
  it scores every row on every decision.

The Normalize stage: every component reaches the weighted sum through its
plugin's ``normalize``, as the Kubernetes framework's NormalizeScore. The default
clips the raw scores onto 0–10 (NaN to 0). A plugin overrides it only to skip work
its formula makes redundant, and says why; type plugins are normalized once per
table, so they never need to.

Invariant: every normalized component is on 0–10 on every row that passes the
filters (the only rows that are ranked or shown), and with weights summing to 1 the
total is on 0–10 too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from core.catalog import Catalog
from core.classify import ClassPolicy
from core.model import Priority
from core.placement.snapshot import Columns

SCORE_MAX = 10.0


def clip_scores(raw: np.ndarray) -> np.ndarray:
    """Raw scores onto 0–10: below 0 and NaN → 0, above 10 → 10 (a fresh array)."""
    out = np.fmax(raw, 0.0)  # fmax drops NaN in favour of the 0
    np.fmin(out, SCORE_MAX, out=out)
    return out


@dataclass(frozen=True, slots=True)
class ScoreContext:
    catalog: Catalog
    type_names: tuple[str, ...]
    policy: ClassPolicy
    priority: Priority


class TypeScorePlugin(ABC):
    """A component that depends only on the GPU type, the class and the priority."""

    # The component's name; it is also the key of its weight.
    name: str

    @abstractmethod
    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        """One raw score per type in ``ctx.type_names``, meant on 0–10."""

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Normalize stage: the raw per-type scores onto 0–10."""
        return clip_scores(raw)


class RowScorePlugin(ABC):
    """A component that depends on each GPU's current state."""

    # The component's name; it is also the key of its weight.
    name: str

    @abstractmethod
    def row_scores(self, cols: Columns, share_pct: int) -> np.ndarray:
        """One raw score per snapshot row, meant on 0–10 for the rows that pass the
        filters; may return a snapshot column (nobody writes to it)."""

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Normalize stage: ``row_scores``' output onto 0–10 on every row that passes the
        filters. May return ``raw`` itself; the framework never writes to the result."""
        return clip_scores(raw)


ScorePlugin = TypeScorePlugin | RowScorePlugin


class Efficiency(TypeScorePlugin):
    """10 × (TOPS/W of the GPU type) / (best TOPS/W in the catalog)."""

    name = "efficiency"

    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        best = ctx.catalog.best_tops_per_watt
        return np.array([10.0 * ctx.catalog.tops_per_watt(t) / best for t in ctx.type_names])


class Affinity(TypeScorePlugin):
    """10 on the class's preferred type, 5 on a type merely able to run it."""

    name = "affinity"

    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        allowed = ctx.policy.allowed_types
        return np.array([
            10.0 if t == ctx.policy.preferred_type else (5.0 if not allowed or t in allowed
                                                         else 0.0)
            for t in ctx.type_names
        ])


class PowerBonus(TypeScorePlugin):
    """HIGH/CRITICAL favour the fast GPU, LOW the frugal one, MEDIUM is neutral (5)."""

    name = "power"

    def type_scores(self, ctx: ScoreContext) -> np.ndarray:
        cat = ctx.catalog
        if ctx.priority in (Priority.HIGH, Priority.CRITICAL):
            return np.array([10.0 * cat.throughput(t) / cat.max_throughput
                             for t in ctx.type_names])
        if ctx.priority is Priority.LOW:
            return np.array([10.0 * (1.0 - cat[t].tdp_w / cat.max_tdp_w)
                             for t in ctx.type_names])
        return np.full(len(ctx.type_names), 5.0)


class UtilizationHeadroom(RowScorePlugin):
    """10 × (1 − current utilization)."""

    name = "utilization"

    def row_scores(self, cols: Columns, share_pct: int) -> np.ndarray:
        return cols.util_score

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        # Already on 0–10 on every row: utilization is validated to 0..1 wherever it
        # enters a snapshot (``Gpu`` and ``FleetSnapshot.set_utilization``).
        return raw


class MpsFit(RowScorePlugin):
    """10 × (share requested) / (free share before placing): a perfect fit scores 10."""

    name = "mps"

    def row_scores(self, cols: Columns, share_pct: int) -> np.ndarray:
        return share_pct * cols.inv_share_free

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        # Never below 0 (share and 1 / free share are positive); above 10 only where the
        # free share is short, so only the upper clip. ``raw`` is fresh: clip in place.
        return np.fmin(raw, SCORE_MAX, out=raw)


DEFAULT_SCORERS: tuple[ScorePlugin, ...] = (
    Efficiency(), Affinity(), UtilizationHeadroom(), PowerBonus(), MpsFit(),
)
