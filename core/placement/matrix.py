"""The decision matrix: GPUs × score components × weights → total, rank, chosen.

A plain value that pages render, the store keeps (``to_dict``) and tests
inspect. For large fleets ``to_dict(max_rows=…)`` keeps the top-ranked rows
and counts the rest by rejection reason, so what is stored stays small.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MatrixRow:
    node: str
    gpu_index: int
    gpu_type: str
    fits: bool
    # The first failing filter and its reason (None when the GPU fits).
    filter: str | None
    reason: str | None
    scores: Mapping[str, float] | None
    total: float | None
    rank: int | None
    chosen: bool

    @property
    def key(self) -> str:
        return f"{self.node}/gpu{self.gpu_index}"


@dataclass(frozen=True, slots=True)
class DecisionMatrix:
    components: tuple[str, ...]
    weights: Mapping[str, float]
    weight_version: int | None
    rows: tuple[MatrixRow, ...]
    summary: str

    @property
    def chosen(self) -> MatrixRow | None:
        return next((r for r in self.rows if r.chosen), None)

    def ranked(self) -> list[MatrixRow]:
        """Fitting rows best first, then the rejected ones."""
        fit = sorted((r for r in self.rows if r.fits), key=lambda r: r.rank or 0)
        return fit + [r for r in self.rows if not r.fits]

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per row, for tables."""
        out = []
        for r in self.ranked():
            rec: dict[str, Any] = {"gpu": r.key, "node": r.node, "type": r.gpu_type,
                                   "fits": r.fits, "rank": r.rank, "chosen": r.chosen}
            for c in self.components:
                rec[c] = None if r.scores is None else r.scores[c]
            rec["total"] = r.total
            rec["reason"] = r.reason or ""
            out.append(rec)
        return out

    def to_dict(self, *, max_rows: int | None = None) -> dict[str, Any]:
        ranked = self.ranked()
        kept = ranked if max_rows is None else ranked[:max_rows]
        dropped = ranked[len(kept):]
        return {
            "components": list(self.components),
            "weights": dict(self.weights),
            "weight_version": self.weight_version,
            "summary": self.summary,
            "rows": [row_to_dict(r) for r in kept],
            "omitted": {
                "fitting": sum(1 for r in dropped if r.fits),
                "rejected_by_filter": dict(Counter(r.filter for r in dropped if not r.fits)),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionMatrix:
        return cls(
            components=tuple(data["components"]),
            weights=dict(data["weights"]),
            weight_version=data.get("weight_version"),
            rows=tuple(MatrixRow(**r) for r in data["rows"]),
            summary=data.get("summary", ""),
        )


def row_to_dict(r: MatrixRow) -> dict[str, Any]:
    return {"node": r.node, "gpu_index": r.gpu_index, "gpu_type": r.gpu_type, "fits": r.fits,
            "filter": r.filter, "reason": r.reason,
            "scores": None if r.scores is None else dict(r.scores),
            "total": r.total, "rank": r.rank, "chosen": r.chosen}
