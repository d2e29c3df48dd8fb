"""The placement pipeline: classify → filter → (post-filter) → score → normalize → choose.

``Scheduler.decide`` is pure and fast: it runs every filter and scorer as a
vectorized operation over the snapshot's columns and keeps references to the
arrays it computed. Everything an operator or the store wants to know beyond
the choice — per-GPU reasons, the full decision matrix, the "0/N nodes fit"
explanation and what would make the request fit — is built lazily from those
arrays, so it costs nothing unless asked for. The framework runs any plugins it
is given: filters explain themselves (``core.placement.postfilter``), and scorers
are of two kinds, per GPU type and per row (``core.placement.scorers``). Building
a scheduler from the settings lives outside this package (``core.scheduling``).

Invariants: a GPU rejected by any filter is never chosen; every score component
passes the Normalize stage onto 0–10 and the weights sum to 1, so totals are on
0–10 too; ties go to the first row in fleet order, so decisions are deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from core.catalog import Catalog
from core.classify import ClassPolicy, ClassRules
from core.model import MpsSlice, PlacementRequest, Priority, SchedulerWeights, WorkloadClass
from core.placement.filters import DEFAULT_FILTERS, FilterContext, FilterPlugin
from core.placement.matrix import DecisionMatrix, MatrixRow, row_to_dict
from core.placement.postfilter import FilterStatus, run_filters
from core.placement.scorers import (
    DEFAULT_SCORERS,
    RowScorePlugin,
    ScoreContext,
    ScorePlugin,
    TypeScorePlugin,
)
from core.placement.snapshot import Columns, FleetSnapshot

# Rows of a decision's matrix kept in the store (``db.decisions``): the best-ranked GPUs
# (the chosen one is rank 1) and, when fewer fit, the rejected ones with their filter; the
# rest are counted by filter. Building and writing the rows is most of a recorded
# decision's cost (at 50 rows, about 2 ms of the controller's CPU per placement; at 20,
# well under half).
STORED_MATRIX_ROWS = 20


@dataclass(frozen=True)
class _TypeTable:
    """Per-GPU-type normalized scores of the type plugins for one (class, priority)."""

    per_component: dict[str, np.ndarray]
    weighted_sum: np.ndarray

    @cached_property
    def rounded(self) -> dict[str, list[float]]:
        """``per_component`` rounded to 4 places as the stored matrix shows them, per type
        (rounded once per table, not once per matrix row)."""
        return {name: [round(v, 4) for v in values.tolist()]
                for name, values in self.per_component.items()}


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
    filter_status: FilterStatus = field(repr=False)
    _total: np.ndarray | None = field(repr=False)
    _types: _TypeTable = field(repr=False)
    _row_plugins: Sequence[RowScorePlugin] = field(repr=False)
    # Each row plugin's normalized scores as ``decide`` computed them (None: compute again).
    _row_scores: Sequence[np.ndarray] | None = field(default=None, repr=False)

    # -- lazy explanations -----------------------------------------------------------
    @property
    def first_failure(self) -> np.ndarray:
        """Per row: index of the first filter that rejected it, or -1 when it fits."""
        return self.filter_status.first_failure

    @property
    def gpus_fit(self) -> int:
        return self.filter_status.gpus_fit

    @property
    def node_verdicts(self) -> dict[str, int]:
        return self.filter_status.node_verdicts

    @cached_property
    def summary(self) -> str:
        """One line: "5/12 nodes fit" or "0/12 nodes fit: 7 insufficient GPU memory, …"."""
        line = self.filter_status.nodes_line
        if self.row is not None:
            return f"placed on {self.snapshot.key(self.row)} (score {self.score:.2f}); {line}"
        return line

    def reason(self, row: int) -> str | None:
        return self.filter_status.reason(row)

    @cached_property
    def recommendations(self) -> list[str]:
        """What would make the request fit (PostFilter), when nothing does."""
        if self.row is not None:
            return []
        return self.filter_status.recommendations

    def matrix(self) -> DecisionMatrix:
        return self._matrix

    def matrix_dict(self, *, max_rows: int) -> dict[str, Any]:
        """``matrix().to_dict(max_rows=max_rows)``, building only the rows it keeps (the
        best-ranked fitting GPUs, then rejected ones in fleet order) and counting the rest
        by filter from the arrays: at 5,000 GPUs the store keeps 20 rows, not 5,000."""
        if "_matrix" in self.__dict__:
            return self._matrix.to_dict(max_rows=max_rows)
        snap, status = self.snapshot, self.filter_status
        ok = status.ok
        fit_rows = np.flatnonzero(ok)
        if self._total is not None and fit_rows.size:
            totals = self._total[fit_rows]
            if fit_rows.size > max_rows:
                # Only the best ``max_rows`` are kept: the rows above the max_rows-th best
                # total, sorted (fewer than max_rows), then the rows tied with it in fleet
                # order (a stable sort puts ties in fleet order), never sorting the many
                # identical GPUs of a fleet that tie.
                kth = np.partition(totals, totals.size - max_rows)[totals.size - max_rows]
                above = totals > kth
                best = fit_rows[above][np.argsort(-totals[above], kind="stable")]
                kept_fit = np.concatenate(
                    [best, fit_rows[totals == kth][:max_rows - best.size]])
            else:
                kept_fit = fit_rows[np.argsort(-totals, kind="stable")]
            ranked = True
        else:
            kept_fit, ranked = fit_rows[:max_rows], False
        rejected = np.flatnonzero(~ok)
        kept_rejected = rejected[:max(0, max_rows - fit_rows.size)]
        dropped_rejected = rejected[kept_rejected.size:]
        names = tuple(self.weights.as_dict())
        # Python's round on plain floats (as the full matrix rounds): the type components
        # come rounded per type; the rows are the dicts ``DecisionMatrix.to_dict`` writes,
        # built directly.
        names_of, types_of = snap.node_names, snap.type_names
        rows: list[dict[str, Any]] = []
        if kept_fit.size:
            types = snap.type_idx[kept_fit].tolist()
            by_type = self._types.rounded
            columns: dict[str, list[float]] = {
                name: [values[t] for t in types] for name, values in by_type.items()}
            for i, plugin in enumerate(self._row_plugins):
                scores = self._row_scores[i] if self._row_scores is not None else \
                    plugin.normalize(plugin.row_scores(status.ctx.cols, self.share_pct))
                columns[plugin.name] = [round(v, 4) for v in np.asarray(
                    scores, dtype=np.float64)[kept_fit].tolist()]
            ordered = [columns[n] for n in names]
            totals = [round(v, 4) for v in self._total[kept_fit].tolist()] \
                if self._total is not None else [None] * kept_fit.size
            nodes = snap.node_idx[kept_fit].tolist()
            gpus = snap.gpu_index[kept_fit].tolist()
            chosen = -1 if self.row is None else self.row
            for i, (row, scores_i) in enumerate(zip(kept_fit.tolist(), zip(*ordered, strict=True),
                                                    strict=True)):
                rows.append({
                    "node": names_of[nodes[i]], "gpu_index": gpus[i],
                    "gpu_type": types_of[types[i]], "fits": True, "filter": None,
                    "reason": None, "scores": dict(zip(names, scores_i, strict=True)),
                    "total": totals[i], "rank": i + 1 if ranked else None,
                    "chosen": row == chosen})
        for row in kept_rejected.tolist():
            failed = status.failed_filter(row)
            rows.append(row_to_dict(MatrixRow(
                node=snap.node_of(row), gpu_index=int(snap.gpu_index[row]),
                gpu_type=snap.gpu_type_of(row), fits=False,
                filter=None if failed is None else failed.name,
                reason=None if failed is None else failed.reason(status.ctx, row),
                scores=None, total=None, rank=None, chosen=row == self.row)))
        by_filter: dict[str | None, int] = {}
        if dropped_rejected.size:
            # Counted per filter, in the order each filter first appears in fleet order.
            fails = status.first_failure[dropped_rejected]
            counts = np.bincount(fails, minlength=len(status.filters))
            present = np.flatnonzero(counts)
            first_at = [int(np.argmax(fails == f)) for f in present.tolist()]
            for k in np.argsort(first_at, kind="stable").tolist():
                f = int(present[k])
                by_filter[status.filters[f].name] = int(counts[f])
        return {"components": list(names), "weights": self.weights.as_dict(),
                "weight_version": self.weight_version, "summary": self.summary,
                "rows": rows,
                "omitted": {"fitting": int(fit_rows.size - kept_fit.size),
                            "rejected_by_filter": by_filter}}

    def matrix_json(self, *, max_rows: int) -> str:
        """``matrix_dict`` as compact JSON, built once per ``max_rows`` and kept: the
        controller builds it on its deciding thread right after the decision, and the
        store's recording thread only writes the text. Kept as one string, not as the
        dict's dozens of objects, which would live until the pass ends and make the
        garbage collector's full passes come sooner."""
        memo: dict[int, str] = self.__dict__.setdefault("_matrix_json", {})
        found = memo.get(max_rows)
        if found is None:
            found = memo[max_rows] = json.dumps(self.matrix_dict(max_rows=max_rows),
                                                separators=(",", ":"))
        return found

    @cached_property
    def _matrix(self) -> DecisionMatrix:
        snap, status = self.snapshot, self.filter_status
        comps = {name: table[snap.type_idx] for name, table in self._types.per_component.items()}
        for plugin in self._row_plugins:
            comps[plugin.name] = plugin.normalize(plugin.row_scores(status.ctx.cols,
                                                                    self.share_pct))
        names = tuple(self.weights.as_dict())
        ok = status.ok
        fit_rows = np.flatnonzero(ok)
        rank_of: dict[int, int] = {}
        if self._total is not None and fit_rows.size:
            order = fit_rows[np.argsort(-self._total[fit_rows], kind="stable")]
            rank_of = {int(r): i + 1 for i, r in enumerate(order)}
        rows = []
        for row in range(snap.size):
            fits = bool(ok[row])
            failed = None if fits else status.failed_filter(row)
            rows.append(MatrixRow(
                node=snap.node_of(row), gpu_index=int(snap.gpu_index[row]),
                gpu_type=snap.gpu_type_of(row), fits=fits,
                filter=None if failed is None else failed.name,
                reason=None if failed is None else failed.reason(status.ctx, row),
                scores={n: round(float(comps[n][row]), 4) for n in names} if fits else None,
                total=round(float(self._total[row]), 4)
                if fits and self._total is not None else None,
                rank=rank_of.get(row), chosen=row == self.row,
            ))
        return DecisionMatrix(components=names, weights=self.weights.as_dict(),
                              weight_version=self.weight_version, rows=tuple(rows),
                              summary=self.summary)


class Scheduler:
    """Runs the pipeline with a fixed set of plugins and weights.

    ``filters`` run in order (the first that rejects a row is its reason); ``scorers``
    are ``TypeScorePlugin``s and ``RowScorePlugin``s, one per weighted component.
    """

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
        names = [s.name for s in scorers]
        if len(set(names)) != len(names) or set(names) != set(weights.as_dict()):
            raise ValueError(f"scorers {sorted(names)} do not match the weighted components")
        for s in scorers:
            if isinstance(s, TypeScorePlugin) == isinstance(s, RowScorePlugin):
                raise TypeError(f"scorer {s.name!r} must be exactly one of TypeScorePlugin "
                                f"and RowScorePlugin")
        self.catalog = catalog
        self.classes = classes
        self.weights = weights
        self.weight_version = weight_version
        self.max_utilization = max_utilization
        self.max_clients = max_clients
        self.memory_headroom = memory_headroom
        self.filters: tuple[FilterPlugin, ...] = tuple(filters)
        self.scorers: tuple[ScorePlugin, ...] = tuple(scorers)
        self._type_plugins = tuple(s for s in scorers if isinstance(s, TypeScorePlugin))
        self._row_plugins = tuple(s for s in scorers if isinstance(s, RowScorePlugin))
        self._weight = weights.as_dict()
        self._row_weights = tuple((p, self._weight[p.name]) for p in self._row_plugins)
        self._tables: dict[tuple[WorkloadClass, Priority], _TypeTable] = {}

    def memory_for(self, request: PlacementRequest) -> int:
        mib = request.memory_mib
        return mib if self.memory_headroom == 0 else int(np.ceil(mib * (1 + self.memory_headroom)))

    def type_table(self, policy: ClassPolicy, priority: Priority) -> _TypeTable:
        """The type plugins' normalized scores and their weighted sum, per catalog type."""
        key = (policy.workload_class, priority)
        table = self._tables.get(key)
        if table is None:
            ctx = ScoreContext(self.catalog, self.catalog.names, policy, priority)
            per = {p.name: p.normalize(np.asarray(p.type_scores(ctx), dtype=np.float64))
                   for p in self._type_plugins}
            total = np.zeros(len(self.catalog.names))
            for p in self._type_plugins:
                total = total + self._weight[p.name] * per[p.name]
            table = _TypeTable(per, total)
            self._tables[key] = table
        return table

    def decide(self, request: PlacementRequest, snapshot: FleetSnapshot, *,
               exclude_rows: Iterable[int] = ()) -> Decision:
        """Classify, filter, score, normalize and choose. ``exclude_rows``: GPUs where
        binding failed."""
        policy = self.classes.classify(request.model_memory_gb)
        memory = self.memory_for(request)
        cols: Columns = snapshot.cols
        excluded = None
        rows = list(exclude_rows)
        if rows:
            excluded = np.zeros(snapshot.size, dtype=bool)
            excluded[rows] = True
        ctx = FilterContext(snapshot, cols, policy, memory, self.max_utilization,
                            self.max_clients, excluded, request.labels)
        status = run_filters(self.filters, ctx)
        ok = status.ok
        table = self.type_table(policy, request.priority)
        row: int | None = None
        score: float | None = None
        # Score → Normalize → weighted sum. ``total`` is fresh (a gather) and updated in
        # place; a normalized component may be a snapshot column, so it is only read.
        total = table.weighted_sum[snapshot.type_idx]
        row_scores = []
        for plugin, weight in self._row_weights:
            scores = plugin.normalize(plugin.row_scores(cols, policy.share_pct))
            row_scores.append(scores)  # kept for the stored matrix (only read)
            total += scores * weight
        # Rows that do not fit can never win; their totals are never shown.
        np.copyto(total, -np.inf, where=~ok)
        best = int(total.argmax()) if snapshot.size else 0
        if snapshot.size and total[best] != -np.inf:
            row, score = best, float(total[best])
        return Decision(request=request, policy=policy, memory_mib=memory,
                        weights=self.weights, weight_version=self.weight_version,
                        row=row, score=score, snapshot=snapshot, filter_status=status,
                        _total=None if row is None else total, _types=table,
                        _row_plugins=self._row_plugins, _row_scores=tuple(row_scores))

    def place(self, request: PlacementRequest, snapshot: FleetSnapshot) -> Decision:
        """Decide and reserve the slice on the chosen GPU (Reserve stage)."""
        decision = self.decide(request, snapshot)
        if decision.row is not None:
            snapshot.reserve(decision.row, decision.mps_slice())
        return decision
