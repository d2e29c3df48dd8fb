"""The placement pipeline: classify → filter → (post-filter) → score → choose.

``Scheduler.decide`` is pure and fast: it runs every filter and scorer as a
vectorized operation over the snapshot's columns and keeps references to the
arrays it computed. Everything an operator or the store wants to know beyond
the choice — per-GPU reasons, the full decision matrix, the "0/N nodes fit"
explanation and what would make the request fit — is built lazily from those
arrays, so it costs nothing unless asked for.

Invariants: a GPU rejected by any filter is never chosen; scores are on 0–10
and the weights sum to 1, so totals are on 0–10 too; ties go to the first
row in fleet order, so decisions are deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from core.catalog import Catalog
from core.classify import ClassPolicy, ClassRules
from core.model import MpsSlice, PlacementRequest, Priority, SchedulerWeights, WorkloadClass
from core.placement.filters import DEFAULT_FILTERS, GIB, FilterContext, FilterPlugin, pct
from core.placement.matrix import DecisionMatrix, MatrixRow
from core.placement.scorers import DEFAULT_SCORERS, ScoreContext, ScorePlugin
from core.placement.snapshot import Columns, FleetSnapshot
from core.settings import Settings


@dataclass(frozen=True, slots=True)
class _TypeTable:
    """Per-GPU-type scores of the type-only plugins for one (class, priority)."""

    per_component: dict[str, np.ndarray]
    weighted_sum: np.ndarray


class ChosenGpu:
    """What any placement choice says about the GPU it chose (the scheduler's decisions
    and the baselines' alike): needs ``request``, ``policy``, ``memory_mib``, ``row``
    and ``snapshot``."""

    request: PlacementRequest
    policy: ClassPolicy
    memory_mib: int
    row: int | None
    snapshot: FleetSnapshot

    @property
    def placed(self) -> bool:
        return self.row is not None

    @property
    def workload_class(self) -> WorkloadClass:
        return self.policy.workload_class

    @property
    def share_pct(self) -> int:
        return self.policy.share_pct

    @property
    def node(self) -> str | None:
        return None if self.row is None else self.snapshot.node_of(self.row)

    @property
    def gpu_index(self) -> int | None:
        return None if self.row is None else int(self.snapshot.gpu_index[self.row])

    @property
    def gpu_type(self) -> str | None:
        return None if self.row is None else self.snapshot.gpu_type_of(self.row)

    @property
    def owner(self) -> str:
        return self.request.request_id or self.request.model_name

    def mps_slice(self) -> MpsSlice:
        """The slice this decision asks the chosen GPU to hold."""
        return MpsSlice(owner=self.owner, thread_pct=self.share_pct,
                        memory_mib=self.memory_mib, model=self.request.model_name,
                        workload_class=self.workload_class)


@dataclass(eq=False)
class Decision(ChosenGpu):
    """The outcome of one placement decision, with lazy explanations."""

    request: PlacementRequest
    policy: ClassPolicy
    memory_mib: int
    weights: SchedulerWeights
    weight_version: int | None
    row: int | None
    score: float | None
    snapshot: FleetSnapshot = field(repr=False)
    _ctx: FilterContext = field(repr=False)
    _filters: Sequence[FilterPlugin] = field(repr=False)
    _masks: list[np.ndarray] = field(repr=False)
    _ok: np.ndarray = field(repr=False)
    _total: np.ndarray | None = field(repr=False)
    _types: _TypeTable = field(repr=False)
    _row_plugins: Sequence[ScorePlugin] = field(repr=False)


    # -- lazy explanations -----------------------------------------------------------
    @cached_property
    def first_failure(self) -> np.ndarray:
        """Per row: index of the first filter that rejected it, or -1 when it fits."""
        passed = np.vstack(self._masks)
        fail = np.argmin(passed, axis=0)
        return np.where(self._ok, -1, fail)

    @property
    def gpus_fit(self) -> int:
        return int(np.count_nonzero(self._ok))

    @cached_property
    def node_verdicts(self) -> dict[str, int]:
        """Per node: -1 when some GPU fits, else the furthest filter any of its GPUs reached.

        A node without GPUs gets ``len(filters)`` ("without GPUs").
        """
        n_filters = len(self._filters)
        reached = np.where(self.first_failure == -1, n_filters + 1, self.first_failure)
        per_node = np.full(len(self.snapshot.node_names), n_filters, dtype=np.int64)
        seen = np.zeros(len(self.snapshot.node_names), dtype=bool)
        seen[self.snapshot.node_idx] = True
        per_node[seen] = -1
        np.maximum.at(per_node, self.snapshot.node_idx, reached)
        per_node[per_node == n_filters + 1] = -1
        return dict(zip(self.snapshot.node_names, per_node.tolist(), strict=True))

    @cached_property
    def summary(self) -> str:
        """One line: "5/12 nodes fit" or "0/12 nodes fit: 7 insufficient GPU memory, …"."""
        verdicts = self.node_verdicts
        fit = sum(1 for v in verdicts.values() if v == -1)
        head = f"{fit}/{len(verdicts)} nodes fit"
        counts = Counter(v for v in verdicts.values() if v != -1)
        parts = [f"{n} {self._phrase(v)}" for v, n in
                 sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        if self.row is not None:
            head = f"placed on {self.snapshot.key(self.row)} (score {self.score:.2f}); {head}"
        return f"{head}: {', '.join(parts)}" if parts else head

    def _phrase(self, filter_index: int) -> str:
        if filter_index >= len(self._filters):
            return "without GPUs"
        f = self._filters[filter_index]
        if f.name == "Utilization":
            return f"utilization ≥ {pct(self._ctx.max_utilization)}"
        return f.phrase

    def reason(self, row: int) -> str | None:
        fail = int(self.first_failure[row])
        return None if fail == -1 else self._filters[fail].reason(self._ctx, row)

    @cached_property
    def recommendations(self) -> list[str]:
        """What would make the request fit (PostFilter), when nothing does."""
        if self.row is not None:
            return []
        return _recommend(self)

    def matrix(self) -> DecisionMatrix:
        return self._matrix

    @cached_property
    def _matrix(self) -> DecisionMatrix:
        snap = self.snapshot
        comps = {name: table[snap.type_idx] for name, table in self._types.per_component.items()}
        for plugin in self._row_plugins:
            comps[plugin.name] = plugin.row_scores(self._ctx.cols, self.share_pct)
        names = tuple(self.weights.as_dict())
        fit_rows = np.flatnonzero(self._ok)
        rank_of: dict[int, int] = {}
        if self._total is not None and fit_rows.size:
            order = fit_rows[np.argsort(-self._total[fit_rows], kind="stable")]
            rank_of = {int(r): i + 1 for i, r in enumerate(order)}
        first = self.first_failure
        rows = []
        for row in range(snap.size):
            fits = bool(self._ok[row])
            fail = int(first[row])
            rows.append(MatrixRow(
                node=snap.node_of(row), gpu_index=int(snap.gpu_index[row]),
                gpu_type=snap.gpu_type_of(row), fits=fits,
                filter=None if fits else self._filters[fail].name,
                reason=None if fits else self._filters[fail].reason(self._ctx, row),
                scores={n: round(float(comps[n][row]), 4) for n in names} if fits else None,
                total=round(float(self._total[row]), 4)
                if fits and self._total is not None else None,
                rank=rank_of.get(row), chosen=row == self.row,
            ))
        return DecisionMatrix(components=names, weights=self.weights.as_dict(),
                              weight_version=self.weight_version, rows=tuple(rows),
                              summary=self.summary)


class Scheduler:
    """Runs the pipeline with a fixed set of plugins and weights."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        classes: ClassRules,
        weights: SchedulerWeights,
        weight_version: int | None = None,
        max_utilization: float = 0.90,
        max_clients: int = 48,
        memory_headroom: float = 0.0,
        filters: Sequence[FilterPlugin] = DEFAULT_FILTERS,
        scorers: Sequence[ScorePlugin] = DEFAULT_SCORERS,
    ) -> None:
        names = {s.name for s in scorers}
        if names != set(weights.as_dict()):
            raise ValueError(f"scorers {sorted(names)} do not match the weighted components")
        self.catalog = catalog
        self.classes = classes
        self.weights = weights
        self.weight_version = weight_version
        self.max_utilization = max_utilization
        self.max_clients = max_clients
        self.memory_headroom = memory_headroom
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self._type_plugins = tuple(s for s in scorers if s.by_type)
        self._row_plugins = tuple(s for s in scorers if not s.by_type)
        self._weight = weights.as_dict()
        self._tables: dict[tuple[WorkloadClass, Priority], _TypeTable] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, weights: SchedulerWeights | None = None,
                      weight_version: int | None = None) -> Scheduler:
        """The default plugins with the settings' limits; ``weights`` default to the settings'."""
        p = settings.placement
        return cls(catalog=settings.catalog, classes=settings.classes,
                   weights=weights or p.weights, weight_version=weight_version,
                   max_utilization=p.max_utilization, max_clients=p.max_mps_clients_per_gpu,
                   memory_headroom=p.memory_headroom)

    def memory_for(self, request: PlacementRequest) -> int:
        mib = request.memory_mib
        return mib if self.memory_headroom == 0 else int(np.ceil(mib * (1 + self.memory_headroom)))

    def type_table(self, policy: ClassPolicy, priority: Priority) -> _TypeTable:
        key = (policy.workload_class, priority)
        table = self._tables.get(key)
        if table is None:
            ctx = ScoreContext(self.catalog, self.catalog.names, policy, priority)
            per = {p.name: p.type_scores(ctx) for p in self._type_plugins}
            total = np.zeros(len(self.catalog.names))
            for p in self._type_plugins:
                total = total + self._weight[p.name] * per[p.name]
            table = _TypeTable(per, total)
            self._tables[key] = table
        return table

    def decide(self, request: PlacementRequest, snapshot: FleetSnapshot, *,
               exclude_rows: Iterable[int] = ()) -> Decision:
        """Classify, filter, score and choose. ``exclude_rows``: GPUs where binding failed."""
        policy = self.classes.classify(request.model_memory_gb)
        memory = self.memory_for(request)
        cols: Columns = snapshot.cols
        excluded = None
        rows = list(exclude_rows)
        if rows:
            excluded = np.zeros(snapshot.size, dtype=bool)
            excluded[rows] = True
        ctx = FilterContext(snapshot, cols, policy, memory, self.max_utilization,
                            self.max_clients, excluded)
        masks = [f.mask(ctx) for f in self.filters]
        ok = masks[0] & masks[1]
        for m in masks[2:]:
            ok &= m
        table = self.type_table(policy, request.priority)
        row: int | None = None
        score: float | None = None
        total: np.ndarray | None = None
        if ok.any():
            # Fresh arrays throughout, updated in place: no extra allocations.
            total = table.weighted_sum[snapshot.type_idx]
            for p in self._row_plugins:
                part = p.row_scores(cols, policy.share_pct) * self._weight[p.name]
                total += part
            masked = total.copy()
            np.copyto(masked, -np.inf, where=~ok)
            best = int(masked.argmax())
            row, score = best, float(total[best])
        return Decision(request=request, policy=policy, memory_mib=memory,
                        weights=self.weights, weight_version=self.weight_version,
                        row=row, score=score, snapshot=snapshot, _ctx=ctx,
                        _filters=self.filters, _masks=masks, _ok=ok, _total=total,
                        _types=table, _row_plugins=self._row_plugins)

    def place(self, request: PlacementRequest, snapshot: FleetSnapshot) -> Decision:
        """Decide and reserve the slice on the chosen GPU (Reserve stage)."""
        decision = self.decide(request, snapshot)
        if decision.row is not None:
            snapshot.reserve(decision.row, decision.mps_slice())
        return decision


def _recommend(d: Decision) -> list[str]:
    """PostFilter: for each reason nodes were rejected, what would make the request fit."""
    snap, c, ctx = d.snapshot, d._ctx.cols, d._ctx
    first = d.first_failure
    out: list[str] = []
    failing = set(np.unique(first[first >= 0]).tolist())
    names = [f.name for f in d._filters]

    def rows_failing(name: str) -> np.ndarray:
        return np.flatnonzero(first == names.index(name)) if name in names else np.array([], int)

    if "NodeAvailable" in names and names.index("NodeAvailable") in failing:
        rows = rows_failing("NodeAvailable")
        cordoned = sorted({snap.node_of(r) for r in rows if not c.node_schedulable[r]})
        if cordoned:
            out.append(f"uncordon {len(cordoned)} node(s): {', '.join(cordoned[:5])}")
        broken = len(rows) - sum(1 for r in rows if not c.node_schedulable[r])
        if broken:
            out.append(f"repair {broken} GPU(s) on not-ready or unhealthy nodes")
    if "GpuCapability" in names and names.index("GpuCapability") in failing:
        out.append("allow more GPU types for this class, or disable MIG on a GPU "
                   "(MPS sharing does not run on MIG GPUs)")
    if "GpuMemory" in names and names.index("GpuMemory") in failing:
        rows = rows_failing("GpuMemory")
        best = int(rows[np.argmax(c.mem_free[rows])])
        need = d.memory_mib / GIB
        out.append(
            f"largest free GPU memory among them is {c.mem_free[best] / GIB:.1f} GiB on "
            f"{snap.key(best)}; the model needs {need:.1f} GiB: free memory there (move or "
            f"scale in a replica), quantize the model below {c.mem_free[best] / GIB:.1f} GB, "
            f"or add a GPU with ≥ {need:.0f} GiB free")
    if "Utilization" in names and names.index("Utilization") in failing:
        rows = rows_failing("Utilization")
        best = int(rows[np.argmin(c.util[rows])])
        out.append(f"lowest utilization among them is {pct(c.util[best])} on {snap.key(best)}; "
                   f"wait until it falls below {pct(ctx.max_utilization)} or scale out")
    if "MpsShare" in names and names.index("MpsShare") in failing:
        rows = rows_failing("MpsShare")
        best = int(rows[np.argmax(c.share_free[rows])])
        free = int(c.share_free[best])
        hint = f"; a request for at most {free} % would fit there" if free else ""
        out.append(f"most free MPS share among them is {free} % on {snap.key(best)}; "
                   f"this {d.workload_class.value}-class request needs {d.share_pct} %{hint}, "
                   f"or release a slice there")
    if "MpsClientLimit" in names and names.index("MpsClientLimit") in failing:
        out.append(f"move clients off GPUs at the {ctx.max_clients}-client MPS limit")
    return out
