"""Filter plugins: which GPUs may take the request, and why the others may not.

Each plugin gives a vectorized pass mask over the snapshot's rows and, only
when asked (lazily, for the decision matrix and the PostFilter), the
human-readable reason for one rejected row. The order of plugins is data:
the first failing plugin is the reason a row is reported with, like the
Kubernetes scheduler's short-circuiting filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.classify import ClassPolicy
from core.placement.snapshot import Columns, FleetSnapshot

GIB = 1024


def pct(fraction: float) -> str:
    """0.9 → "90 %" (the spacing operators read in the SPEC)."""
    return f"{fraction * 100:.0f} %"


@dataclass(frozen=True, slots=True)
class FilterContext:
    """What the filters need about one request, resolved once per decision."""

    snapshot: FleetSnapshot
    cols: Columns
    policy: ClassPolicy
    memory_mib: int
    max_utilization: float
    max_clients: int
    # Rows where binding this request already failed (the PostFilter retries elsewhere).
    excluded: np.ndarray | None = None

    @property
    def share_pct(self) -> int:
        return self.policy.share_pct


class FilterPlugin(Protocol):
    name: str
    # The phrase used in "0/N nodes fit: 7 <phrase>, ...".
    phrase: str

    def mask(self, ctx: FilterContext) -> np.ndarray: ...

    def reason(self, ctx: FilterContext, row: int) -> str: ...


class NodeAvailable:
    name = "NodeAvailable"
    phrase = "node unschedulable or GPU unhealthy"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.available

    def reason(self, ctx: FilterContext, row: int) -> str:
        c = ctx.cols
        if not c.node_ready[row]:
            return "node is not ready"
        if not c.node_schedulable[row]:
            return "node is cordoned (unschedulable)"
        return "GPU is unhealthy"


class GpuCapability:
    name = "GpuCapability"
    phrase = "GPU type or mode cannot run the class"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.snapshot.capability_mask(ctx.policy.allowed_types, ctx.share_pct < 100)

    def reason(self, ctx: FilterContext, row: int) -> str:
        s = ctx.snapshot
        gpu_type = s.gpu_type_of(row)
        allowed = ctx.policy.allowed_types
        if allowed and gpu_type not in allowed:
            return (f"{ctx.policy.workload_class.value} class runs on "
                    f"{', '.join(sorted(allowed))}, not {gpu_type}")
        return "GPU is in MIG mode, where MPS sharing is not supported"


class GpuMemory:
    name = "GpuMemory"
    phrase = "insufficient GPU memory"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.mem_free >= ctx.memory_mib

    def reason(self, ctx: FilterContext, row: int) -> str:
        free = int(ctx.cols.mem_free[row])
        return f"needs {ctx.memory_mib / GIB:.1f} GiB of GPU memory, {free / GIB:.1f} GiB free"


class Utilization:
    name = "Utilization"
    phrase = "utilization ≥ 90 %"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.util < ctx.max_utilization

    def reason(self, ctx: FilterContext, row: int) -> str:
        util = float(ctx.cols.util[row])
        return f"utilization {pct(util)} is not below {pct(ctx.max_utilization)}"


class MpsShare:
    name = "MpsShare"
    phrase = "insufficient free MPS share"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.share_free >= ctx.share_pct

    def reason(self, ctx: FilterContext, row: int) -> str:
        free = int(ctx.cols.share_free[row])
        return (f"{ctx.policy.workload_class.value} class needs {ctx.share_pct} % of SM "
                f"threads, {free} % free")


class MpsClientLimit:
    name = "MpsClientLimit"
    phrase = "MPS client limit reached"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.clients < ctx.max_clients

    def reason(self, ctx: FilterContext, row: int) -> str:
        return (f"{int(ctx.cols.clients[row])} MPS clients already "
                f"(limit {ctx.max_clients})")


class NotTriedBefore:
    """Skips GPUs where binding this same request already failed (bounded retries)."""

    name = "NotTriedBefore"
    phrase = "binding failed there for this request"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        if ctx.excluded is None:
            return ctx.cols.available  # all-pass here: available rows are checked first
        return ~ctx.excluded

    def reason(self, ctx: FilterContext, row: int) -> str:
        return "binding this request there failed; trying another GPU"


DEFAULT_FILTERS: tuple[FilterPlugin, ...] = (
    NodeAvailable(), GpuCapability(), GpuMemory(), Utilization(), MpsShare(), MpsClientLimit(),
    NotTriedBefore(),
)
