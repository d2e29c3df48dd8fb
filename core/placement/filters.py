"""Filter plugins: which GPUs may take the request, why the others may not, and what would
make them fit.

Each plugin gives a vectorized pass mask over the snapshot's rows and explains itself,
only when asked (lazily, for the decision matrix and the PostFilter): the reason one
rejected row gives, the phrase nodes are counted under in "0/N nodes fit: 7 <phrase>",
and what would make the rows it rejected fit. The framework therefore never needs to know
which plugins it runs. The order of plugins is data: the first failing plugin is the
reason a row is reported with, like the Kubernetes scheduler's short-circuiting filters.

Invariants: a mask is a boolean array with one entry per snapshot row, or None when the
plugin rejects no row at all (it then costs nothing to combine); masks are never written
to after they are returned, because some are the snapshot's own columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

import numpy as np

from core.classify import ClassPolicy
from core.model import MpsSlice
from core.mps import device_plugin
from core.placement.snapshot import Columns, FleetSnapshot

GIB = 1024
# Set by the autoscaler on a scale-up request: the GPU type it sized the replica for, and
# "true" when it counted on a free slot of a GPU already in use (no fresh GPU paid for).
GPU_TYPE_LABEL = "gpu-scheduler.io/gpu-type"
GPU_IN_USE_LABEL = "gpu-scheduler.io/gpu-in-use"


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
    # The request's labels (the autoscaler's choice of GPU type and GPU in use).
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def share_pct(self) -> int:
        return self.policy.share_pct


class FilterPlugin(Protocol):
    """One Filter stage plugin. Anything with these members plugs into the pipeline."""

    # Shown as the matrix's "filter" column and counted by name in stored matrices.
    name: str

    def mask(self, ctx: FilterContext) -> np.ndarray | None:
        """True for the rows that pass; None when every row passes."""
        ...

    def reason(self, ctx: FilterContext, row: int) -> str:
        """Why ``row`` (which this plugin rejected) cannot take the request."""
        ...

    def phrase(self, ctx: FilterContext) -> str:
        """What nodes this plugin rejected are counted under: "0/N nodes fit: 7 <phrase>"."""
        ...

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        """What would make a GPU fit, given the rows (non-empty) whose first failing filter
        is this one; [] when there is nothing an operator could do."""
        ...


def combine_masks(masks: Sequence[np.ndarray | None], size: int) -> np.ndarray:
    """The rows that pass every filter: the AND of any number of masks (None passes all).

    The result is always a fresh array, so it may be kept while the masks are shared.
    """
    arrays = [m for m in masks if m is not None]
    if not arrays:
        return np.ones(size, dtype=bool)
    if len(arrays) == 1:
        return arrays[0].copy()
    ok = arrays[0] & arrays[1]
    for m in arrays[2:]:
        ok &= m
    return ok


def first_failures(masks: Sequence[np.ndarray | None], ok: np.ndarray) -> np.ndarray:
    """Per row: the index (in pipeline order) of the first filter that rejected it, or -1
    when it fits. Vectorized: one pass per filter over the rows still passing."""
    out = np.full(ok.shape, -1, dtype=np.int64)
    if ok.all():
        return out
    # Filter by filter, in order: the rows that passed every earlier one and fail this one.
    alive = np.ones(ok.shape, dtype=bool)
    for i, m in enumerate(masks):
        if m is None:
            continue
        out[alive & ~m] = i
        alive &= m
    return out


class NodeAvailable:
    name = "NodeAvailable"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.available

    def reason(self, ctx: FilterContext, row: int) -> str:
        c = ctx.cols
        if not c.node_ready[row]:
            return "node is not ready"
        if not c.node_schedulable[row]:
            return "node is cordoned (unschedulable)"
        return "GPU is unhealthy"

    def phrase(self, ctx: FilterContext) -> str:
        return "node unschedulable or GPU unhealthy"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        snap, c = ctx.snapshot, ctx.cols
        cordoned_rows = rows[~c.node_schedulable[rows]]
        cordoned = sorted({snap.node_of(int(r)) for r in cordoned_rows})
        out = []
        if cordoned:
            out.append(f"uncordon {len(cordoned)} node(s): {', '.join(cordoned[:5])}")
        broken = len(rows) - len(cordoned_rows)
        if broken:
            out.append(f"repair {broken} GPU(s) on not-ready or unhealthy nodes")
        return out


class GpuCapability:
    name = "GpuCapability"

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

    def phrase(self, ctx: FilterContext) -> str:
        return "GPU type or mode cannot run the class"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        return ["allow more GPU types for this class, or disable MIG on a GPU "
                "(MPS sharing does not run on MIG GPUs)"]


class GpuMemory:
    name = "GpuMemory"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.mem_free >= ctx.memory_mib

    def reason(self, ctx: FilterContext, row: int) -> str:
        free = int(ctx.cols.mem_free[row])
        return f"needs {ctx.memory_mib / GIB:.1f} GiB of GPU memory, {free / GIB:.1f} GiB free"

    def phrase(self, ctx: FilterContext) -> str:
        return "insufficient GPU memory"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        c, snap = ctx.cols, ctx.snapshot
        best = int(rows[np.argmax(c.mem_free[rows])])
        need = ctx.memory_mib / GIB
        return [
            f"largest free GPU memory among them is {c.mem_free[best] / GIB:.1f} GiB on "
            f"{snap.key(best)}; the model needs {need:.1f} GiB: free memory there (move or "
            f"scale in a replica), quantize the model below {c.mem_free[best] / GIB:.1f} GB, "
            f"or add a GPU with ≥ {need:.0f} GiB free"]


class Utilization:
    name = "Utilization"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.util < ctx.max_utilization

    def reason(self, ctx: FilterContext, row: int) -> str:
        util = float(ctx.cols.util[row])
        return f"utilization {pct(util)} is not below {pct(ctx.max_utilization)}"

    def phrase(self, ctx: FilterContext) -> str:
        return f"utilization ≥ {pct(ctx.max_utilization)}"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        c = ctx.cols
        best = int(rows[np.argmin(c.util[rows])])
        return [f"lowest utilization among them is {pct(c.util[best])} on "
                f"{ctx.snapshot.key(best)}; wait until it falls below "
                f"{pct(ctx.max_utilization)} or scale out"]


class MpsShare:
    name = "MpsShare"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.share_free >= ctx.share_pct

    def reason(self, ctx: FilterContext, row: int) -> str:
        free = int(ctx.cols.share_free[row])
        return (f"{ctx.policy.workload_class.value} class needs {ctx.share_pct} % of SM "
                f"threads, {free} % free")

    def phrase(self, ctx: FilterContext) -> str:
        return "insufficient free MPS share"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        c = ctx.cols
        best = int(rows[np.argmax(c.share_free[rows])])
        free = int(c.share_free[best])
        hint = f"; a request for at most {free} % would fit there" if free else ""
        return [f"most free MPS share among them is {free} % on {ctx.snapshot.key(best)}; "
                f"this {ctx.policy.workload_class.value}-class request needs "
                f"{ctx.share_pct} %{hint}, or release a slice there"]


class MpsClientLimit:
    name = "MpsClientLimit"

    def mask(self, ctx: FilterContext) -> np.ndarray:
        return ctx.cols.clients < ctx.max_clients

    def reason(self, ctx: FilterContext, row: int) -> str:
        return (f"{int(ctx.cols.clients[row])} MPS clients already "
                f"(limit {ctx.max_clients})")

    def phrase(self, ctx: FilterContext) -> str:
        return "MPS client limit reached"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        return [f"move clients off GPUs at the {ctx.max_clients}-client MPS limit"]


class DeviceReplica:
    """A GPU takes a new slice only while its node's device-plugin config advertises a
    replica of ``nvidia.com/gpu`` that no slice holds yet (None: no device-plugin limit).

    It runs after the capacity filters, so a GPU it rejects has room for the request in
    every other respect: reconfiguring the node is then exactly what would make it fit.
    """

    name = "DeviceReplica"

    def mask(self, ctx: FilterContext) -> np.ndarray | None:
        if not ctx.snapshot.replicas_limited:
            return None
        return ctx.cols.replicas_free > 0

    def reason(self, ctx: FilterContext, row: int) -> str:
        snap = ctx.snapshot
        limit = snap.replicas_of(row)
        config = snap.device_plugin_config_of(row) or "the node's device-plugin config"
        held = int(ctx.cols.clients[row])
        return (f"no free device-plugin replica: {config} advertises {limit} per GPU, "
                f"{held} held")

    def phrase(self, ctx: FilterContext) -> str:
        return "no free device-plugin replica"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        snap = ctx.snapshot
        # Least disruption: the GPU whose node needs the fewest replicas, first in fleet order.
        needed, row = min(((self._replicas_needed(ctx, int(r)), int(r)) for r in rows),
                          key=lambda nr: nr[0])
        node, target = snap.node_of(row), device_plugin.config_name(needed)
        if target == snap.device_plugin_config_of(row):
            return [f"wait until {node} advertises every replica of {target}, or restart its "
                    f"device plugin through a rollout plan (placement never changes a "
                    f"node's config)"]
        return [f"reconfigure {node} to {target} through a rollout plan (placement never "
                f"changes a node's config)"]

    @staticmethod
    def _replicas_needed(ctx: FilterContext, row: int) -> int:
        """Replicas per GPU the node's config would need with the request on ``row``: the
        device-plugin compiler's own rule over every GPU of that node."""
        snap = ctx.snapshot
        new = MpsSlice(owner="placement-request", thread_pct=ctx.share_pct,
                       memory_mib=ctx.memory_mib)
        layouts = []
        for r in np.flatnonzero(snap.node_idx == snap.node_idx[row]).tolist():
            layout = snap.layout(r)
            layouts.append(replace(layout, slices=(*layout.slices, new)) if r == row
                           else layout)
        return device_plugin.node_replicas(layouts)


class AutoscalerChoice:
    """A replica the autoscaler added goes where it was sized for: a GPU of the type it
    chose (``GPU_TYPE_LABEL``), and, when it counted on a free slot of a GPU already in
    use (``GPU_IN_USE_LABEL`` = "true"), a GPU that already hosts a model server, so that
    the fleet does not pay for a fresh GPU it did not plan for (SPEC §3.6, §3.8) — as
    long as one of them still has room (memory, share, MPS clients), so a plan gone
    stale never strands the request. A request without these labels (every one not
    from the autoscaler) passes everywhere.

    It runs after the capacity filters, so a GPU it rejects has room in every other
    respect: the recommendation is to drop the label, or let the autoscaler re-plan.
    """

    name = "AutoscalerChoice"

    def mask(self, ctx: FilterContext) -> np.ndarray | None:
        gpu_type = ctx.labels.get(GPU_TYPE_LABEL)
        in_use = ctx.labels.get(GPU_IN_USE_LABEL) == "true"
        if not gpu_type and not in_use:
            return None
        ok = np.ones(ctx.snapshot.size, dtype=bool)
        if gpu_type:
            names = ctx.snapshot.type_names
            if gpu_type not in names:
                return np.zeros(ctx.snapshot.size, dtype=bool)
            ok &= ctx.snapshot.type_idx == names.index(gpu_type)
        if in_use:
            c = ctx.cols
            held = ok & (c.clients > 0)
            # Only while such a GPU still has room: a stale plan must not strand the
            # request (it then goes to a fresh GPU of the type, as an unlabelled one would).
            room = (held & c.available & (c.mem_free >= ctx.memory_mib)
                    & (c.share_free >= ctx.share_pct) & (c.clients < ctx.max_clients))
            if room.any():
                ok = held
        return ok

    def reason(self, ctx: FilterContext, row: int) -> str:
        gpu_type = ctx.labels.get(GPU_TYPE_LABEL)
        if gpu_type and ctx.snapshot.gpu_type_of(row) != gpu_type:
            return (f"the autoscaler sized this replica for {gpu_type}, not "
                    f"{ctx.snapshot.gpu_type_of(row)}")
        return "the autoscaler planned a free slot on a GPU already in use; this one is idle"

    def phrase(self, ctx: FilterContext) -> str:
        return "not the GPU the autoscaler planned for"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        return [f"remove the {GPU_TYPE_LABEL} / {GPU_IN_USE_LABEL} labels from the request, "
                "or wait for the autoscaler's next plan"]


class NotTriedBefore:
    """Skips GPUs where binding this same request already failed (bounded retries)."""

    name = "NotTriedBefore"

    def mask(self, ctx: FilterContext) -> np.ndarray | None:
        return None if ctx.excluded is None else ~ctx.excluded

    def reason(self, ctx: FilterContext, row: int) -> str:
        return "binding this request there failed; trying another GPU"

    def phrase(self, ctx: FilterContext) -> str:
        return "binding failed there for this request"

    def recommend(self, ctx: FilterContext, rows: np.ndarray) -> list[str]:
        # The controller already retries the request later, on every GPU again.
        return []


DEFAULT_FILTERS: tuple[FilterPlugin, ...] = (
    NodeAvailable(), GpuCapability(), GpuMemory(), Utilization(), MpsShare(), MpsClientLimit(),
    DeviceReplica(), AutoscalerChoice(), NotTriedBefore(),
)
