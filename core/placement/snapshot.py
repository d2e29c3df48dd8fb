"""The fleet as columns: one row per GPU, NumPy arrays per attribute.

Filters and scores run over these columns in a few vectorized operations.
The changing state lives in a ``Columns`` value that is replaced, never
mutated, whenever a slice is reserved or released or utilization is updated:
a decision keeps the exact columns it saw and can explain itself later.
Invariant: on every row, reserved slices never exceed 100 % of SM threads,
the GPU's memory, the MPS client limit, or the device-plugin replicas its
node's config advertises (``replicas_free`` stays ≥ 0 for what is reserved
here; a node without a device-plugin limit counts from ``UNLIMITED_REPLICAS``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from core.catalog import Catalog
from core.errors import ReservationError
from core.model import Gpu, MpsSlice, Node
from core.mps.layout import MAX_MPS_CLIENTS, GpuLayout

# Free replicas of a GPU whose node has no device-plugin limit (``Node.gpu_replicas`` None):
# far above any slice count, so the row never runs out however many slices it holds.
UNLIMITED_REPLICAS = 2**62


@dataclass(frozen=True, slots=True)
class Columns:
    """The fleet's changing state at one instant."""

    mem_free: np.ndarray
    share_free: np.ndarray
    clients: np.ndarray
    util: np.ndarray
    util_score: np.ndarray
    # 10 / free MPS share per row: the MPS score is ``share × this``. Rows with no
    # free share are filtered out before this value matters.
    inv_share_free: np.ndarray
    available: np.ndarray
    node_ready: np.ndarray
    node_schedulable: np.ndarray
    gpu_healthy: np.ndarray
    # Replicas of nvidia.com/gpu the node's device-plugin config advertises for this GPU
    # and no slice holds yet.
    replicas_free: np.ndarray


def _inverse_share(share_free: np.ndarray) -> np.ndarray:
    return 10.0 / np.maximum(share_free, 1).astype(np.float64)


# The ``Columns`` a reservation changes, in the order of their rows in the snapshot's block
# (int64 rows; ``inv_share_free``'s row holds float64s).
_BLOCK_ROWS = ("mem_free", "share_free", "clients", "replicas_free", "inv_share_free")


def _block_columns(block: np.ndarray) -> dict[str, np.ndarray]:
    """The ``_BLOCK_ROWS`` columns as views of ``block``'s rows."""
    return {"mem_free": block[0], "share_free": block[1], "clients": block[2],
            "replicas_free": block[3], "inv_share_free": block[4].view(np.float64)}


class FleetSnapshot:
    """Columnar view of a fleet of nodes and their GPUs.

    Static columns (identity, GPU type, memory total, MIG mode) are
    attributes; the changing state is ``self.cols``.
    """

    def __init__(self, nodes: Iterable[Node], catalog: Catalog,
                 *, max_clients: int = MAX_MPS_CLIENTS) -> None:
        self.catalog = catalog
        self.max_clients = max_clients
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.type_names: tuple[str, ...] = catalog.names
        type_pos = {name: i for i, name in enumerate(self.type_names)}
        self.node_names: tuple[str, ...] = tuple(n.name for n in self.nodes)
        rows = [(i, node, gpu) for i, node in enumerate(self.nodes) for gpu in node.gpus]
        self.size = len(rows)
        self._gpus: list[Gpu] = [r[2] for r in rows]

        def col(values: Iterable[object], dtype: type) -> np.ndarray:
            return np.fromiter(values, dtype=dtype, count=self.size)

        self.node_idx = col((r[0] for r in rows), np.intp)
        self.gpu_index = col((r[2].index for r in rows), np.intp)
        self.type_idx = col((type_pos[r[2].gpu_type] for r in rows), np.intp)
        self.mem_total = col((r[2].memory_total_mib for r in rows), np.int64)
        self.mig = col((r[2].mig_enabled for r in rows), bool)
        share_free = col((100 - r[2].share_used_pct for r in rows), np.int64)
        util = col((r[2].utilization for r in rows), np.float64)
        ready = col((r[1].ready for r in rows), bool)
        schedulable = col((r[1].schedulable for r in rows), bool)
        healthy = col((r[2].healthy for r in rows), bool)
        # True when some node's device plugin limits its replicas: otherwise the replica
        # filter passes every row without looking at the column.
        self.replicas_limited = any(r[1].gpu_replicas is not None for r in rows)
        # The columns a reservation changes are rows of one block (``_BLOCK_ROWS``): a
        # reservation copies the block once, not each column (every copy of a column of
        # thousands of rows lets go of the GIL, and waits for it again behind the
        # controller's other threads).
        block = np.empty((len(_BLOCK_ROWS), self.size), dtype=np.int64)
        block[0] = col((r[2].memory_free_mib for r in rows), np.int64)
        block[1] = share_free
        block[2] = col((len(r[2].slices) for r in rows), np.int64)
        block[3] = col((UNLIMITED_REPLICAS if r[1].gpu_replicas is None
                        else r[1].gpu_replicas - len(r[2].slices) for r in rows), np.int64)
        block[4].view(np.float64)[:] = _inverse_share(share_free)
        self.cols = Columns(
            util=util,
            util_score=10.0 * (1.0 - util),
            available=ready & schedulable & healthy,
            node_ready=ready,
            node_schedulable=schedulable,
            gpu_healthy=healthy,
            **_block_columns(block),
        )
        self._block, self._views = block, tuple(getattr(self.cols, n) for n in _BLOCK_ROWS)
        self.slices: list[tuple[MpsSlice, ...]] = [g.slices for g in self._gpus]
        self._owner_row: dict[str, int] = {
            s.owner: row for row, held in enumerate(self.slices) for s in held
        }
        self._capability_cache: dict[tuple[frozenset[str], bool], np.ndarray] = {}
        self._node_groups: tuple[np.ndarray, np.ndarray] | None = None
        # Plain ints (``tolist``): iterating the arrays would make a NumPy scalar per row.
        self._row_of = {(self.node_names[n], g): row for row, (n, g) in enumerate(
            zip(self.node_idx.tolist(), self.gpu_index.tolist(), strict=True))}

    # -- state updates ---------------------------------------------------------------
    def set_utilization(self, util: np.ndarray) -> None:
        util = np.array(util, dtype=np.float64)
        if util.shape != (self.size,) or np.isnan(util).any() or (util < 0).any() \
                or (util > 1).any():
            raise ValueError("utilization must be one value in [0, 1] per GPU row")
        self.cols = replace(self.cols, util=util, util_score=10.0 * (1.0 - util))

    def set_schedulable(self, node: str, schedulable: bool) -> None:
        rows = self.node_idx == self.node_names.index(node)
        flags = self.cols.node_schedulable.copy()
        flags[rows] = schedulable
        c = self.cols
        self.cols = replace(c, node_schedulable=flags,
                            available=c.node_ready & flags & c.gpu_healthy)

    def capability_mask(self, allowed_types: frozenset[str], sharing: bool) -> np.ndarray:
        """Rows whose GPU type may run the class; MPS sharing is impossible on MIG GPUs."""
        key = (allowed_types, sharing)
        mask = self._capability_cache.get(key)
        if mask is None:
            by_type = np.array([not allowed_types or t in allowed_types
                                for t in self.type_names], dtype=bool)
            mask = by_type[self.type_idx]
            if sharing:
                mask = mask & ~self.mig
            self._capability_cache[key] = mask
        return mask

    @property
    def node_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """``(first row of each node with GPUs, that node's index)``: rows are laid out
        node by node, so per-node aggregates are one ``reduceat`` over these starts."""
        if self._node_groups is None:
            if self.size:
                starts = np.flatnonzero(np.r_[True, self.node_idx[1:] != self.node_idx[:-1]])
            else:
                starts = np.zeros(0, dtype=np.intp)
            self._node_groups = (starts, self.node_idx[starts])
        return self._node_groups

    # -- identity --------------------------------------------------------------------
    def node_of(self, row: int) -> str:
        return self.node_names[self.node_idx[row]]

    def key(self, row: int) -> str:
        return f"{self.node_of(row)}/gpu{int(self.gpu_index[row])}"

    def row_of(self, node: str, gpu_index: int) -> int:
        try:
            return self._row_of[(node, gpu_index)]
        except KeyError:
            raise ReservationError(f"no GPU {gpu_index} on node {node!r}") from None

    def gpu_type_of(self, row: int) -> str:
        return self.type_names[self.type_idx[row]]

    def replicas_of(self, row: int) -> int | None:
        """Replicas per GPU that ``row``'s node advertises; None when not limited."""
        return self.nodes[self.node_idx[row]].gpu_replicas

    def device_plugin_config_of(self, row: int) -> str:
        """The named device-plugin config ``row``'s node runs ("" when unknown)."""
        return self.nodes[self.node_idx[row]].device_plugin_config

    def row_of_owner(self, owner: str) -> int | None:
        return self._owner_row.get(owner)

    def layout(self, row: int) -> GpuLayout:
        return replace(GpuLayout.from_gpu(self.node_of(row), self._gpus[row]),
                       slices=self.slices[row])

    # -- reserve / unreserve ---------------------------------------------------------
    def reserve(self, row: int, new: MpsSlice) -> None:
        """Hold ``new`` on GPU ``row``. Idempotent for the same owner and row."""
        held = self._owner_row.get(new.owner)
        if held is not None:
            if held == row:
                return
            raise ReservationError(f"{new.owner} already holds a slice on {self.key(held)}")
        if not self.cols.available[row]:
            raise ReservationError(f"{self.key(row)} is not available for placement")
        if self.cols.replicas_free[row] <= 0:
            raise ReservationError(
                f"{self.key(row)} has no free device-plugin replica "
                f"({self.replicas_of(row)} advertised per GPU)")
        reason = self.layout(row).why_not(new, max_clients=self.max_clients)
        if reason is not None:
            raise ReservationError(reason)
        self._apply(row, new, +1)
        self.slices[row] = (*self.slices[row], new)
        self._owner_row[new.owner] = row

    def unreserve(self, owner: str) -> bool:
        """Release ``owner``'s slice. Idempotent, never raises: False when nothing was held."""
        row = self._owner_row.pop(owner, None)
        if row is None:
            return False
        held = next(s for s in self.slices[row] if s.owner == owner)
        self.slices[row] = tuple(s for s in self.slices[row] if s.owner != owner)
        self._apply(row, held, -1)
        return True

    def _apply(self, row: int, sl: MpsSlice, sign: int) -> None:
        c = self.cols
        if all(getattr(c, n) is v for n, v in zip(_BLOCK_ROWS, self._views, strict=True)):
            block = self._block.copy()  # copy on write: the old columns stay as they were
        else:  # columns replaced from outside: into a block of their own
            block = np.empty((len(_BLOCK_ROWS), self.size), dtype=np.int64)
            for i, name in enumerate(_BLOCK_ROWS[:4]):
                block[i] = getattr(c, name)
            block[4].view(np.float64)[:] = c.inv_share_free
        cols = _block_columns(block)
        cols["mem_free"][row] -= sign * sl.memory_mib
        cols["share_free"][row] -= sign * sl.thread_pct
        cols["clients"][row] += sign
        cols["inv_share_free"][row] = 10.0 / max(int(cols["share_free"][row]), 1)
        cols["replicas_free"][row] -= sign
        self.cols = replace(c, **cols)
        self._block, self._views = block, tuple(cols[n] for n in _BLOCK_ROWS)

    # -- back to objects -------------------------------------------------------------
    def to_nodes(self) -> tuple[Node, ...]:
        """The fleet as domain objects, reserved slices and current state included."""
        rows_by_node: dict[int, list[int]] = {}
        for row, n in enumerate(self.node_idx):
            rows_by_node.setdefault(int(n), []).append(row)
        c = self.cols
        out = []
        for n, node in enumerate(self.nodes):
            gpus = tuple(replace(self._gpus[row], slices=self.slices[row],
                                 utilization=float(c.util[row]),
                                 healthy=bool(c.gpu_healthy[row]))
                         for row in rows_by_node.get(n, []))
            node_rows = rows_by_node.get(n, [])
            schedulable = bool(c.node_schedulable[node_rows[0]]) if node_rows \
                else node.schedulable
            out.append(replace(node, gpus=gpus, schedulable=schedulable))
        return tuple(out)
