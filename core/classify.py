"""Workload classification by model memory (SPEC §3.3 step 1).

Boundaries, exactly as specified: tiny is strictly below the tiny limit
(4 GB); medium runs from the tiny limit up to and including the medium limit
(16 GB); large is everything above. Thresholds come from settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import ValidationError
from core.model import WorkloadClass


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """What a workload class asks for: MPS share and preferred GPU type."""

    workload_class: WorkloadClass
    share_pct: int
    preferred_type: str
    # Upper bound of the class in GB (None for the last class).
    max_gb: float | None = None
    # GPU types able to run the class; empty means every type in the catalog.
    allowed_types: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        where = f"classes.{self.workload_class.value}"
        if not (1 <= self.share_pct <= 100):
            raise ValidationError(f"{where}.share_pct", "must be within 1..100")


@dataclass(frozen=True)
class ClassRules:
    tiny: ClassPolicy
    medium: ClassPolicy
    large: ClassPolicy

    def __post_init__(self) -> None:
        if self.tiny.max_gb is None or self.medium.max_gb is None:
            raise ValidationError("classes", "tiny and medium need max_gb")
        if not (0 < self.tiny.max_gb <= self.medium.max_gb):
            raise ValidationError("classes.medium.max_gb", "must be ≥ classes.tiny.max_gb > 0")

    def classify(self, model_memory_gb: float) -> ClassPolicy:
        assert self.tiny.max_gb is not None and self.medium.max_gb is not None
        if model_memory_gb < self.tiny.max_gb:
            return self.tiny
        if model_memory_gb <= self.medium.max_gb:
            return self.medium
        return self.large

    def __getitem__(self, cls: WorkloadClass) -> ClassPolicy:
        return {WorkloadClass.TINY: self.tiny, WorkloadClass.MEDIUM: self.medium,
                WorkloadClass.LARGE: self.large}[cls]

    def as_mapping(self) -> Mapping[WorkloadClass, ClassPolicy]:
        return {p.workload_class: p for p in (self.tiny, self.medium, self.large)}
