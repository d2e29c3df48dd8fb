"""The GPU catalog and the figures derived from it that scores rely on.

The catalog is small (a handful of GPU types); scores that depend only on the
GPU type are computed once per type here rather than once per GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

from core.errors import ValidationError
from core.model import THROUGHPUT_FIGURES, GpuType


@dataclass(frozen=True)
class Catalog:
    types: Mapping[str, GpuType]
    electricity_per_kwh: Decimal = Decimal("0.12")
    throughput_figure: str = "tops"

    def __post_init__(self) -> None:
        if not self.types:
            raise ValidationError("catalog", "needs at least one GPU type")
        if self.throughput_figure not in THROUGHPUT_FIGURES:
            raise ValidationError(
                "placement.throughput_figure",
                f"must be one of {', '.join(THROUGHPUT_FIGURES)}",
            )
        object.__setattr__(self, "types", MappingProxyType(dict(self.types)))

    @classmethod
    def of(cls, types: Iterable[GpuType], **kwargs: object) -> Catalog:
        return cls(types={t.name: t for t in types}, **kwargs)  # type: ignore[arg-type]

    def __getitem__(self, name: str) -> GpuType:
        try:
            return self.types[name]
        except KeyError:
            raise ValidationError("gpu_type", f"{name!r} is not in the catalog") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.types)

    def throughput(self, gpu_type: str) -> float:
        return self[gpu_type].figure(self.throughput_figure)

    def tops_per_watt(self, gpu_type: str) -> float:
        return self.throughput(gpu_type) / self[gpu_type].tdp_w

    @property
    def best_tops_per_watt(self) -> float:
        return max(self.tops_per_watt(n) for n in self.types)

    @property
    def max_throughput(self) -> float:
        return max(self.throughput(n) for n in self.types)

    @property
    def max_tdp_w(self) -> float:
        return max(t.tdp_w for t in self.types.values())

    @property
    def max_memory_gb(self) -> float:
        return max(t.memory_mib for t in self.types.values()) / 1024
