"""MPS layouts: which clients share a GPU, with what thread share and memory.

Invariant kept by every function here: a layout never holds more than 100 %
of SM threads, more memory than the GPU has, or more clients than the MPS
server allows. ``with_slice`` refuses (``ReservationError``) rather than
over-commit; ``plan_layout`` places what fits and explains what does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from core.errors import ReservationError
from core.model import Gpu, MpsSlice, SliceTotals

MAX_MPS_CLIENTS = 48


@dataclass(frozen=True, slots=True)
class GpuLayout(SliceTotals):
    node: str
    gpu_index: int
    gpu_type: str
    memory_total_mib: int
    slices: tuple[MpsSlice, ...] = ()
    mig_enabled: bool = False
    other_memory_mib: int = 0

    @classmethod
    def from_gpu(cls, node: str, gpu: Gpu) -> GpuLayout:
        return cls(node=node, gpu_index=gpu.index, gpu_type=gpu.gpu_type,
                   memory_total_mib=gpu.memory_total_mib, slices=gpu.slices,
                   mig_enabled=gpu.mig_enabled, other_memory_mib=gpu.other_memory_mib)

    @property
    def key(self) -> str:
        return f"{self.node}/gpu{self.gpu_index}"

    def why_not(self, new: MpsSlice, *, max_clients: int = MAX_MPS_CLIENTS) -> str | None:
        """Why ``new`` cannot join this layout, or None when it fits."""
        if any(s.owner == new.owner for s in self.slices):
            return f"{new.owner} already holds a slice on {self.key}"
        if new.thread_pct > self.share_free_pct:
            return (f"needs {new.thread_pct} % of SM threads, {self.share_free_pct} % free "
                    f"on {self.key}")
        if new.memory_mib > self.memory_free_mib:
            return (f"needs {new.memory_mib} MiB, {self.memory_free_mib} MiB free "
                    f"on {self.key}")
        if self.clients + 1 > max_clients:
            return f"{self.key} already has {self.clients} MPS clients (limit {max_clients})"
        return None

    def with_slice(self, new: MpsSlice, *, max_clients: int = MAX_MPS_CLIENTS) -> GpuLayout:
        reason = self.why_not(new, max_clients=max_clients)
        if reason is not None:
            raise ReservationError(reason)
        return replace(self, slices=(*self.slices, new))

    def without(self, owner: str) -> GpuLayout:
        """The layout with ``owner``'s slice released; unchanged when absent."""
        return replace(self, slices=tuple(s for s in self.slices if s.owner != owner))


@dataclass(frozen=True, slots=True)
class LayoutPlan:
    before: GpuLayout
    after: GpuLayout
    placed: tuple[MpsSlice, ...]
    unplaced: tuple[tuple[MpsSlice, str], ...]


def plan_layout(
    layout: GpuLayout, requested: Iterable[MpsSlice], *, max_clients: int = MAX_MPS_CLIENTS
) -> LayoutPlan:
    """Add ``requested`` slices to ``layout``, largest share first (first-fit decreasing).

    Slices that do not fit are returned with the reason, never squeezed in.
    """
    after = layout
    placed: list[MpsSlice] = []
    unplaced: list[tuple[MpsSlice, str]] = []
    for new in sorted(requested, key=lambda s: (-s.thread_pct, -s.memory_mib, s.owner)):
        reason = after.why_not(new, max_clients=max_clients)
        if reason is None:
            after = replace(after, slices=(*after.slices, new))
            placed.append(new)
        else:
            unplaced.append((new, reason))
    return LayoutPlan(before=layout, after=after, placed=tuple(placed), unplaced=tuple(unplaced))
