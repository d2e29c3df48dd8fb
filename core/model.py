"""Domain values: GPU types, GPUs, nodes, MPS slices, requests, weights.

Everything here is a frozen value. Memory is counted in integer MiB and MPS
shares in integer percent, so that sums never drift; money is ``Decimal``.
Constructors validate and raise ``ValidationError`` naming the field, so a
value that exists is a value that is valid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from core.errors import ValidationError
from core.validate import integer, kind_of, number, show, text

MIB_PER_GB = 1024


class Priority(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class WorkloadClass(StrEnum):
    TINY = "tiny"
    MEDIUM = "medium"
    LARGE = "large"


THROUGHPUT_FIGURES = ("tops", "dense_int8_tops", "sparse_int8_tops", "dense_bf16_tflops")


def gb_to_mib(gb: float) -> int:
    """GB (as operators write model sizes) to whole MiB, rounding up."""
    return math.ceil(round(gb * MIB_PER_GB, 6))


@dataclass(frozen=True, slots=True)
class GpuType:
    """One row of the GPU catalog (SPEC §3.1)."""

    name: str
    memory_mib: int
    tdp_w: float
    tops: float
    idle_w: float
    price_per_gpu_hour: Decimal
    dense_int8_tops: float
    sparse_int8_tops: float
    dense_bf16_tflops: float
    mig_capable: bool = True

    def __post_init__(self) -> None:
        where = f"catalog.{self.name}"
        for name in ("tdp_w", "tops", "dense_int8_tops", "sparse_int8_tops", "dense_bf16_tflops"):
            _positive(f"{where}.{name}", getattr(self, name))
        _positive(f"{where}.memory_gb", self.memory_mib)
        if not (0 <= self.idle_w < self.tdp_w):
            raise ValidationError(f"{where}.idle_w", "must be ≥ 0 and below tdp_w")
        if self.price_per_gpu_hour < 0:
            raise ValidationError(f"{where}.price_per_gpu_hour", "must be ≥ 0")

    def figure(self, name: str) -> float:
        """The throughput figure named ``name`` (one of ``THROUGHPUT_FIGURES``)."""
        if name not in THROUGHPUT_FIGURES:
            raise ValidationError("placement.throughput_figure", f"unknown figure {name!r}")
        return float(getattr(self, name))


@dataclass(frozen=True, slots=True)
class MpsSlice:
    """One MPS client on a GPU: who, what share of SM threads, how much memory."""

    owner: str
    thread_pct: int
    memory_mib: int
    model: str = ""
    workload_class: WorkloadClass | None = None

    def __post_init__(self) -> None:
        if not self.owner:
            raise ValidationError("slice.owner", "must not be empty")
        if not (1 <= self.thread_pct <= 100):
            raise ValidationError("slice.thread_pct", "must be within 1..100")
        if self.memory_mib < 0:
            raise ValidationError("slice.memory_mib", "must be ≥ 0")


class SliceTotals:
    """Totals over ``slices`` for anything that holds MPS slices on one GPU."""

    __slots__ = ()
    slices: tuple[MpsSlice, ...]
    memory_total_mib: int
    other_memory_mib: int

    @property
    def share_used_pct(self) -> int:
        return sum(s.thread_pct for s in self.slices)

    @property
    def share_free_pct(self) -> int:
        return 100 - self.share_used_pct

    @property
    def memory_used_mib(self) -> int:
        return self.other_memory_mib + sum(s.memory_mib for s in self.slices)

    @property
    def memory_free_mib(self) -> int:
        return self.memory_total_mib - self.memory_used_mib

    @property
    def clients(self) -> int:
        return len(self.slices)


@dataclass(frozen=True, slots=True)
class Gpu(SliceTotals):
    """A physical GPU as last observed."""

    index: int
    gpu_type: str
    memory_total_mib: int
    utilization: float = 0.0
    power_w: float = 0.0
    slices: tuple[MpsSlice, ...] = ()
    healthy: bool = True
    mig_enabled: bool = False
    uuid: str = ""
    # Memory held by processes the scheduler did not place (drivers, strays).
    other_memory_mib: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.utilization <= 1.0) or math.isnan(self.utilization):
            raise ValidationError("gpu.utilization", "must be within 0..1")


@dataclass(frozen=True, slots=True)
class Node:
    """A Kubernetes node with its GPUs."""

    name: str
    gpus: tuple[Gpu, ...]
    schedulable: bool = True
    ready: bool = True
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The named device-plugin config the node runs ("exclusive", "mps-4"; "" unknown) and
    # the replicas of nvidia.com/gpu it advertises per GPU under that config. Placement
    # binds only into replicas advertised and not yet held; None = not limited by a
    # device plugin (a hand-built snapshot), never "unknown read as plenty" from a source.
    device_plugin_config: str = ""
    gpu_replicas: int | None = None

    def __post_init__(self) -> None:
        if not _DNS_SUBDOMAIN.match(self.name):
            raise ValidationError("node.name", f"{self.name!r} is not a valid node name")
        if self.gpu_replicas is not None and self.gpu_replicas < 0:
            raise ValidationError("node.gpu_replicas", "must be ≥ 0")


COMPONENTS = ("efficiency", "affinity", "utilization", "power", "mps")


@dataclass(frozen=True, slots=True)
class SchedulerWeights:
    """Weights of the five score components; each in [0, 1], summing to 1."""

    efficiency: float = 0.30
    affinity: float = 0.25
    utilization: float = 0.20
    power: float = 0.15
    mps: float = 0.10

    SUM_TOLERANCE = 1e-6

    def __post_init__(self) -> None:
        for name in COMPONENTS:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValidationError(f"weights.{name}", "must be a finite number")
            if not (0.0 <= value <= 1.0):
                raise ValidationError(f"weights.{name}", "must be within 0..1")
        total = sum(getattr(self, n) for n in COMPONENTS)
        if abs(total - 1.0) > self.SUM_TOLERANCE:
            raise ValidationError("weights", f"must sum to 1 (they sum to {total:.6f})")

    def as_dict(self) -> dict[str, float]:
        return {n: float(getattr(self, n)) for n in COMPONENTS}

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SchedulerWeights:
        unknown = set(raw) - set(COMPONENTS)
        if unknown:
            raise ValidationError(f"weights.{sorted(unknown)[0]}", "unknown score component")
        values = {}
        for name in COMPONENTS:
            if name not in raw:
                raise ValidationError(f"weights.{name}", "is missing")
            values[name] = number(f"weights.{name}", raw[name])
        return cls(**values)

    @classmethod
    def normalized(cls, raw: Mapping[str, float]) -> SchedulerWeights:
        """Weights scaled to sum to exactly 1 (for proposals built by arithmetic)."""
        total = sum(max(0.0, float(raw[n])) for n in COMPONENTS)
        if total <= 0:
            raise ValidationError("weights", "at least one weight must be positive")
        scaled = [max(0.0, float(raw[n])) / total for n in COMPONENTS]
        # Put the rounding remainder on the largest weight so the sum is 1.
        biggest = max(range(len(scaled)), key=scaled.__getitem__)
        scaled[biggest] += 1.0 - sum(scaled)
        return cls(**dict(zip(COMPONENTS, scaled, strict=True)))


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_REQUEST_ID = re.compile(r"^\S+$")


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """A request to run one model-server replica (SPEC §3.2).

    Build it with ``PlacementRequest.parse`` from untrusted input; the
    constructor validates too, so every instance is valid.
    """

    model_name: str
    model_memory_gb: float
    priority: Priority
    latency_sla_ms: float
    expected_qps: float | None = None
    batch_size: int | None = None
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    request_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not _DNS_LABEL.match(self.model_name):
            raise ValidationError(
                "model_name",
                "must be a lowercase DNS label (a-z, 0-9, '-', at most 63 characters)",
            )
        gb = self.model_memory_gb
        if not isinstance(gb, int | float) or isinstance(gb, bool) or not math.isfinite(gb):
            raise ValidationError("model_memory_gb", "must be a finite number")
        if gb <= 0:
            raise ValidationError("model_memory_gb", "must be greater than 0")
        if gb * MIB_PER_GB < 1:
            raise ValidationError("model_memory_gb", f"{gb:g} GB is below 1 MiB "
                                                     f"({1 / MIB_PER_GB:g} GB), the smallest "
                                                     "memory limit a GPU slice can have")
        if not isinstance(self.priority, Priority):
            raise ValidationError("priority", "must be one of LOW, MEDIUM, HIGH, CRITICAL")
        sla = self.latency_sla_ms
        if not isinstance(sla, int | float) or not math.isfinite(sla) or sla <= 0:
            raise ValidationError("latency_sla_ms", "must be a number greater than 0")
        if self.expected_qps is not None and (
            not math.isfinite(self.expected_qps) or self.expected_qps < 0
        ):
            raise ValidationError("expected_qps", "must be a number ≥ 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValidationError("batch_size", "must be an integer ≥ 1")
        if not _DNS_LABEL.match(self.namespace):
            raise ValidationError("namespace", "must be a lowercase DNS label")
        if len(self.labels) > MAX_LABELS:
            raise ValidationError("labels", f"holds {len(self.labels)} labels; "
                                            f"at most {MAX_LABELS}")
        for key, value in self.labels.items():
            if not isinstance(key, str) or len(key) > MAX_LABEL_KEY:
                raise ValidationError("labels", f"{show(key)} is not a valid label key")
            if not _LABEL_KEY.match(key):
                raise ValidationError(f"labels.{key}", "is not a valid label key")
            if not isinstance(value, str) or not _LABEL_VALUE.match(value):
                raise ValidationError(f"labels.{key}", "is not a valid label value")
        rid = self.request_id
        if not isinstance(rid, str) or len(rid) > MAX_REQUEST_ID or (
                rid and not (rid.isprintable() and _REQUEST_ID.match(rid))):
            raise ValidationError("request_id", f"must be at most {MAX_REQUEST_ID} printable "
                                                "characters without spaces")

    @property
    def memory_mib(self) -> int:
        return gb_to_mib(self.model_memory_gb)

    @classmethod
    def parse(
        cls, raw: Mapping[str, Any], *, max_gpu_memory_gb: float | None = None
    ) -> PlacementRequest:
        """Validate untrusted input (form, YAML, CSV row) into a request.

        Every value is type-checked before anything is computed from it: a
        list or mapping where a scalar belongs is refused naming the field, and
        no ``str()``/``repr()`` of an unchecked value is ever taken (error
        messages quote at most a few dozen characters, ``core.validate.show``).
        ``max_gpu_memory_gb`` is the largest GPU in the catalog: a model that
        is bigger than every GPU is refused here, before it reaches the queue.
        """
        if not isinstance(raw, Mapping):
            raise ValidationError("request", f"must be a mapping of field names to values, "
                                             f"not {kind_of(raw)}")
        for key in raw:
            if not isinstance(key, str) or len(key) > _MAX_FIELD_NAME:
                raise ValidationError("request", f"has a field name that is not one of "
                                                 f"{', '.join(REQUEST_FIELDS)}: {show(key)}")
        unknown = sorted(set(raw) - set(REQUEST_FIELDS))
        if unknown:
            raise ValidationError(unknown[0], "unknown field; expected one of "
                                              f"{', '.join(REQUEST_FIELDS)}")
        for required in ("model_name", "model_memory_gb", "priority", "latency_sla_ms"):
            if _absent(raw.get(required)):
                raise ValidationError(required, "is required")
        priority_raw = text("priority", raw["priority"], max_length=_MAX_FIELD_NAME)
        try:
            priority = Priority(priority_raw.upper())
        except ValueError:
            raise ValidationError(
                "priority", f"{show(priority_raw)} is not one of LOW, MEDIUM, HIGH, CRITICAL"
            ) from None
        memory = number("model_memory_gb", raw["model_memory_gb"])
        if max_gpu_memory_gb is not None and memory > max_gpu_memory_gb:
            raise ValidationError(
                "model_memory_gb",
                f"{memory:g} GB is larger than the largest GPU ({max_gpu_memory_gb:g} GB)",
            )
        qps = raw.get("expected_qps")
        batch = raw.get("batch_size")
        namespace = raw.get("namespace")
        request_id = raw.get("request_id")
        return cls(
            model_name=text("model_name", raw["model_name"], max_length=_MAX_NAME),
            model_memory_gb=memory,
            priority=priority,
            latency_sla_ms=number("latency_sla_ms", raw["latency_sla_ms"]),
            expected_qps=None if _absent(qps) else number("expected_qps", qps),
            batch_size=None if _absent(batch) else integer("batch_size", batch),
            namespace="default" if _absent(namespace)
            else text("namespace", namespace, max_length=_MAX_NAME),
            labels=MappingProxyType(_labels(raw.get("labels"))),
            request_id="" if _absent(request_id)
            else text("request_id", request_id, max_length=MAX_REQUEST_ID),
        )


REQUEST_FIELDS = (
    "model_name", "model_memory_gb", "priority", "latency_sla_ms", "expected_qps",
    "batch_size", "namespace", "labels", "request_id",
)
# Bounds on what one request may carry (Kubernetes' own limits where it has them).
MAX_LABELS = 32
MAX_LABEL_KEY = 253 + 1 + 63  # DNS-subdomain prefix, "/", name
MAX_LABEL_VALUE = 63
MAX_REQUEST_ID = 128  # the store's column
_MAX_NAME = 253
_MAX_FIELD_NAME = 64
# Labels may be written as numbers or booleans in YAML (version: 2); they become text.
_LABEL_SCALARS = (str, int, float)


def _absent(value: Any) -> bool:
    """``None`` or empty text: a field that was left out (a CSV's empty cell)."""
    return value is None or (isinstance(value, str) and value == "")


def _labels(raw: Any) -> dict[str, str]:
    """Label keys and values as text, bounded in number and length, checked by type first."""
    if _absent(raw):
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError("labels", f"must be a mapping of label keys to values, "
                                        f"not {kind_of(raw)}")
    if len(raw) > MAX_LABELS:
        raise ValidationError("labels", f"holds {len(raw)} labels; at most {MAX_LABELS}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ValidationError("labels", f"keys must be text, not {kind_of(key)}")
        if len(key) > MAX_LABEL_KEY:
            raise ValidationError("labels", f"a key is longer than {MAX_LABEL_KEY} characters: "
                                            f"{show(key)}")
        where = f"labels.{key}"
        if not isinstance(value, _LABEL_SCALARS) or (
                isinstance(value, int) and value.bit_length() > 64):
            raise ValidationError(where, f"must be text, not {kind_of(value)}")
        if not isinstance(value, str):
            value = str(value)  # a bounded scalar: cheap and short
        if len(value) > MAX_LABEL_VALUE:
            raise ValidationError(where, f"is longer than {MAX_LABEL_VALUE} characters")
        out[key] = value
    return out


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValidationError(name, "must be a number greater than 0")
