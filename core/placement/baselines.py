"""Baseline placement policies: first-fit, bin-pack, spread and random.

Why: placement quality is judged against the simple policies a cluster would
use without this scheduler. Each baseline has the shape of
``Scheduler.decide`` (a request and a ``FleetSnapshot`` in, a choice with
``row``/``node``/``gpu_index``/``mps_slice()`` out), so an evaluation can swap
policies without knowing which one it runs.

Invariants: a baseline runs the Scheduler's own filter plugins (node
schedulable and healthy, GPU type able to run the class, free memory,
utilization below the limit, free MPS share, MPS client limit, a free
device-plugin replica), so it never chooses a GPU the Scheduler would reject
and never over-commits threads, memory, clients or replicas; only the choice
among the GPUs that fit differs. Building one from the settings lives in
``core.scheduling.build_policy``. Every
policy is deterministic: ties go to the first row in fleet order, and the
random policy draws from its own seeded generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from core.catalog import Catalog
from core.classify import ClassPolicy, ClassRules
from core.model import MpsSlice, PlacementRequest, WorkloadClass
from core.placement.filters import DEFAULT_FILTERS, FilterContext, FilterPlugin, combine_masks
from core.placement.framework import ChosenGpu
from core.placement.snapshot import FleetSnapshot


class PlacementChoice(Protocol):
    """What an evaluation needs from any policy's decision (``Decision`` has all of it)."""

    @property
    def row(self) -> int | None: ...

    @property
    def node(self) -> str | None: ...

    @property
    def gpu_index(self) -> int | None: ...

    @property
    def workload_class(self) -> WorkloadClass: ...

    @property
    def weight_version(self) -> int | None: ...

    def mps_slice(self) -> MpsSlice: ...


class PlacementPolicy(Protocol):
    """Anything that chooses a GPU for a request over a snapshot (``Scheduler`` is one)."""

    def decide(self, request: PlacementRequest, snapshot: FleetSnapshot) -> PlacementChoice: ...


@dataclass(eq=False)
class BaselineDecision(ChosenGpu):
    """A baseline's choice; ``row`` is None when no GPU passes the filters."""

    request: PlacementRequest
    policy: ClassPolicy
    memory_mib: int
    row: int | None
    gpus_fit: int
    snapshot: FleetSnapshot = field(repr=False)
    policy_name: str = ""
    weight_version: int | None = None

    @property
    def summary(self) -> str:
        if self.row is None:
            return f"{self.policy_name}: 0/{self.snapshot.size} GPUs fit"
        return (f"{self.policy_name}: placed on {self.snapshot.key(self.row)}; "
                f"{self.gpus_fit}/{self.snapshot.size} GPUs fit")



class BaselinePolicy(ABC):
    """Runs the Scheduler's filters, then lets a subclass pick one of the rows that fit."""

    name = "baseline"

    def __init__(self, *, catalog: Catalog, classes: ClassRules, max_utilization: float = 0.90,
                 max_clients: int = 48, memory_headroom: float = 0.0,
                 filters: Sequence[FilterPlugin] = DEFAULT_FILTERS) -> None:
        self.catalog = catalog
        self.classes = classes
        self.max_utilization = max_utilization
        self.max_clients = max_clients
        self.memory_headroom = memory_headroom
        self.filters = tuple(filters)

    def feasible(self, request: PlacementRequest, snapshot: FleetSnapshot, *,
                 exclude_rows: Iterable[int] = ()) -> tuple[ClassPolicy, int, np.ndarray]:
        """The request's class, its memory (MiB) and the mask of rows that pass every filter."""
        policy = self.classes.classify(request.model_memory_gb)
        mib = request.memory_mib
        memory = mib if self.memory_headroom == 0 else \
            int(np.ceil(mib * (1 + self.memory_headroom)))
        excluded = None
        rows = list(exclude_rows)
        if rows:
            excluded = np.zeros(snapshot.size, dtype=bool)
            excluded[rows] = True
        ctx = FilterContext(snapshot, snapshot.cols, policy, memory, self.max_utilization,
                            self.max_clients, excluded, request.labels)
        return policy, memory, combine_masks([f.mask(ctx) for f in self.filters], snapshot.size)

    def decide(self, request: PlacementRequest, snapshot: FleetSnapshot, *,
               exclude_rows: Iterable[int] = ()) -> BaselineDecision:
        policy, memory, ok = self.feasible(request, snapshot, exclude_rows=exclude_rows)
        fit = int(np.count_nonzero(ok))
        row = self._pick(ok, snapshot, policy, memory) if fit else None
        return BaselineDecision(request=request, policy=policy, memory_mib=memory, row=row,
                                gpus_fit=fit, snapshot=snapshot, policy_name=self.name)

    @abstractmethod
    def _pick(self, ok: np.ndarray, snapshot: FleetSnapshot, policy: ClassPolicy,
              memory: int) -> int:
        """The chosen row among those ``ok`` (at least one is)."""


class FirstFit(BaselinePolicy):
    """The first GPU in fleet order that fits."""

    name = "first-fit"

    def _pick(self, ok: np.ndarray, snapshot: FleetSnapshot, policy: ClassPolicy,
              memory: int) -> int:
        return int(np.argmax(ok))


class BinPack(BaselinePolicy):
    """Best fit: the GPU left with the least free MPS share, then the least free memory."""

    name = "bin-pack"

    def _pick(self, ok: np.ndarray, snapshot: FleetSnapshot, policy: ClassPolicy,
              memory: int) -> int:
        c = snapshot.cols
        rows = np.flatnonzero(ok)
        # lexsort: the last key is the primary one; stable, so ties keep fleet order.
        order = np.lexsort((c.mem_free[rows] - memory, c.share_free[rows] - policy.share_pct))
        return int(rows[order[0]])


class Spread(BaselinePolicy):
    """Least loaded: the GPU with the most free MPS share, then the lowest utilization."""

    name = "spread"

    def _pick(self, ok: np.ndarray, snapshot: FleetSnapshot, policy: ClassPolicy,
              memory: int) -> int:
        c = snapshot.cols
        rows = np.flatnonzero(ok)
        order = np.lexsort((c.util[rows], -c.share_free[rows]))
        return int(rows[order[0]])


class RandomFit(BaselinePolicy):
    """A GPU drawn uniformly among those that fit, from a seeded generator."""

    name = "random"

    def __init__(self, *, seed: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._rng = np.random.default_rng([seed, 0x5EED])

    def _pick(self, ok: np.ndarray, snapshot: FleetSnapshot, policy: ClassPolicy,
              memory: int) -> int:
        rows = np.flatnonzero(ok)
        return int(rows[self._rng.integers(rows.size)])


BASELINES: dict[str, type[BaselinePolicy]] = {
    FirstFit.name: FirstFit, BinPack.name: BinPack, Spread.name: Spread,
    RandomFit.name: RandomFit,
}
