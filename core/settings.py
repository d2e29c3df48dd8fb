"""Settings: the defaults of SPEC.md, overridable from one file and the environment.

This module is pure: it turns an already-read mapping into validated, typed
settings and names the offending key on any error. Reading files and the
environment is the job of ``core.adapters.settings_source``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from core.alerts import AlertThresholds
from core.autoscale import AutoscaleSettings
from core.catalog import Catalog
from core.classify import ClassPolicy, ClassRules
from core.errors import ValidationError
from core.model import MIB_PER_GB, GpuType, SchedulerWeights, WorkloadClass
from core.validate import integer, number

if TYPE_CHECKING:  # core.feedback reaches core.sim, which needs this module first
    from core.feedback import FeedbackPolicy


def _feedback_policy(raw: Mapping[str, Any] | None = None) -> FeedbackPolicy:
    from core.feedback import FeedbackPolicy

    return FeedbackPolicy.from_mapping(raw or {})


@dataclass(frozen=True)
class PlacementSettings:
    max_utilization: float
    max_mps_clients_per_gpu: int
    memory_headroom: float
    weights: SchedulerWeights


@dataclass(frozen=True)
class FleetSettings:
    nodes_per_type: Mapping[str, int]
    gpus_per_node: int


@dataclass(frozen=True)
class QpsBands:
    safe: float = 50
    caution: float = 100
    high_risk: float = 200


@dataclass(frozen=True)
class Settings:
    catalog: Catalog
    classes: ClassRules
    placement: PlacementSettings
    fleet: FleetSettings
    prices_as_of: str
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    qps_bands: QpsBands = field(default_factory=QpsBands)
    autoscaling: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    feedback: FeedbackPolicy = field(default_factory=_feedback_policy)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``; nested tables merge key by key."""
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    """Validate a settings mapping (defaults already merged in)."""
    catalog_raw = _table(raw, "catalog")
    pricing = _table(raw, "pricing")
    placement = _table(raw, "placement")
    types = [_gpu_type(name, _table(catalog_raw, name, f"catalog.{name}"))
             for name in catalog_raw]
    catalog = Catalog.of(
        types,
        electricity_per_kwh=_decimal("pricing.electricity_per_kwh",
                                     pricing.get("electricity_per_kwh")),
        throughput_figure=str(placement.get("throughput_figure", "tops")),
    )
    classes = _classes(_table(raw, "classes"), catalog)
    weights_raw = _table(placement, "weights", "placement.weights")
    try:
        weights = SchedulerWeights.from_mapping(weights_raw)
    except ValidationError as exc:
        raise ValidationError(f"placement.{exc.field}", exc.message) from None
    max_util = number("placement.max_utilization", placement.get("max_utilization"))
    if not (0 < max_util <= 1):
        raise ValidationError("placement.max_utilization", "must be within (0, 1]")
    max_clients = integer("placement.max_mps_clients_per_gpu",
                       placement.get("max_mps_clients_per_gpu"))
    if not (1 <= max_clients <= 48):
        raise ValidationError("placement.max_mps_clients_per_gpu",
                              "must be within 1..48 (the MPS server's limit on Volta and newer)")
    headroom = number("placement.memory_headroom", placement.get("memory_headroom", 0.0))
    if not (0 <= headroom < 1):
        raise ValidationError("placement.memory_headroom", "must be within [0, 1)")
    fleet_raw = dict(_table(raw, "fleet"))
    gpus_per_node = integer("fleet.gpus_per_node", fleet_raw.pop("gpus_per_node", 1))
    if gpus_per_node < 1:
        raise ValidationError("fleet.gpus_per_node", "must be ≥ 1")
    counts = {}
    for name, count in fleet_raw.items():
        if name not in catalog.types:
            raise ValidationError(f"fleet.{name}", "is not a GPU type in the catalog")
        counts[name] = integer(f"fleet.{name}", count)
        if counts[name] < 0:
            raise ValidationError(f"fleet.{name}", "must be ≥ 0")
    bands_raw = _table(_table(raw, "gates"), "qps_bands", "gates.qps_bands")
    bands = QpsBands(*(number(f"gates.qps_bands.{k}", bands_raw.get(k))
                       for k in ("safe", "caution", "high_risk")))
    if not (0 <= bands.safe <= bands.caution <= bands.high_risk):
        raise ValidationError("gates.qps_bands", "must satisfy safe ≤ caution ≤ high_risk")
    return Settings(
        catalog=catalog,
        classes=classes,
        placement=PlacementSettings(max_util, max_clients, headroom, weights),
        fleet=FleetSettings(counts, gpus_per_node),
        prices_as_of=str(pricing.get("as_of", "")),
        alerts=AlertThresholds.from_mapping(_table(raw, "alerts")),
        qps_bands=bands,
        autoscaling=AutoscaleSettings.from_mapping(_table(raw, "autoscaling")),
        feedback=_feedback_policy(_table(raw, "feedback")),
    )


def _gpu_type(name: str, raw: Mapping[str, Any]) -> GpuType:
    where = f"catalog.{name}"

    def num(key: str) -> float:
        return number(f"{where}.{key}", raw.get(key))

    return GpuType(
        name=name,
        memory_mib=int(num("memory_gb") * MIB_PER_GB),
        tdp_w=num("tdp_w"),
        tops=num("tops"),
        idle_w=num("idle_w"),
        price_per_gpu_hour=_decimal(f"{where}.price_per_gpu_hour", raw.get("price_per_gpu_hour")),
        dense_int8_tops=num("dense_int8_tops"),
        sparse_int8_tops=num("sparse_int8_tops"),
        dense_bf16_tflops=num("dense_bf16_tflops"),
        mig_capable=bool(raw.get("mig_capable", False)),
    )


def _classes(raw: Mapping[str, Any], catalog: Catalog) -> ClassRules:
    policies = {}
    for cls in WorkloadClass:
        where = f"classes.{cls.value}"
        table = _table(raw, cls.value, where)
        preferred = str(table.get("preferred", ""))
        if preferred not in catalog.types:
            raise ValidationError(f"{where}.preferred", f"{preferred!r} is not in the catalog")
        allowed = frozenset(str(t) for t in table.get("allowed", ()))
        for t in allowed:
            if t not in catalog.types:
                raise ValidationError(f"{where}.allowed", f"{t!r} is not in the catalog")
        max_gb = table.get("max_gb")
        policies[cls] = ClassPolicy(
            workload_class=cls,
            share_pct=integer(f"{where}.share_pct", table.get("share_pct")),
            preferred_type=preferred,
            max_gb=None if max_gb is None else number(f"{where}.max_gb", max_gb),
            allowed_types=allowed,
        )
    return ClassRules(policies[WorkloadClass.TINY], policies[WorkloadClass.MEDIUM],
                      policies[WorkloadClass.LARGE])


def _table(raw: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise ValidationError(where or key, "must be a table of settings")
    return value


def _decimal(name: str, value: Any) -> Decimal:
    if value is None or isinstance(value, bool | float):
        raise ValidationError(name, "must be given as a decimal string, e.g. \"1.84\"")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValidationError(name, f"{value!r} is not a decimal number") from None
    if not number.is_finite() or number < 0:
        raise ValidationError(name, "must be a finite amount ≥ 0")
    return number
