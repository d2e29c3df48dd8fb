"""Settings: the defaults of SPEC.md, overridable from one file and the environment.

This module is pure: it turns an already-read mapping into validated, typed
settings and names the offending key on any error. Reading files and the
environment is the job of ``core.adapters.settings_source``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from core.alerts import AlertThresholds
from core.autoscale import AutoscaleSettings
from core.catalog import Catalog
from core.classify import ClassPolicy, ClassRules
from core.errors import ValidationError
from core.model import MIB_PER_GB, GpuType, SchedulerWeights, WorkloadClass
from core.mps.device_plugin import EXCLUSIVE_CONFIG, MPS_CONFIG_PREFIX, config_name
from core.mps.layout import MAX_MPS_CLIENTS
from core.runtime_settings import RuntimeSettings
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


def device_plugin_replicas(config: str, *, where: str = "config") -> int:
    """Replicas of ``nvidia.com/gpu`` per GPU under the named device-plugin config.

    ``exclusive`` → 1, ``mps-<N>`` → N for 2 ≤ N ≤ 48 (the MPS client limit):
    the inverse of ``core.mps.device_plugin.config_name``, so ``mps-1`` or
    ``mps-04`` are refused like any other name, with ``ValidationError(where)``.
    """
    if isinstance(config, str):
        if config == EXCLUSIVE_CONFIG:
            return 1
        digits = config.removeprefix(MPS_CONFIG_PREFIX)
        if digits != config and digits.isascii() and digits.isdigit():
            replicas = int(digits)
            if 2 <= replicas <= MAX_MPS_CLIENTS and config_name(replicas) == config:
                return replicas
    raise ValidationError(where, f"{config!r} is not a device-plugin config: use "
                                 f"{EXCLUSIVE_CONFIG!r} or '{MPS_CONFIG_PREFIX}<N>' with N in "
                                 f"2..{MAX_MPS_CLIENTS}")


@dataclass(frozen=True)
class SimSettings:
    """The digital twin's node-configuration knobs (``[sim]``); times in simulated seconds.

    ``default_device_plugin_config`` is the config every node of the twin runs
    at start unless ``device_plugin_configs`` names another for it (entries for
    nodes the twin does not have are ignored: the same settings serve generated
    fleets). ``max_unavailable_per_deployment`` is the disruption budget a drain
    respects (an eviction is refused while that many replicas of the pod's
    deployment are not Running); ``eviction_retry_s`` how often a refused
    eviction is retried; ``termination_grace_s`` how long an evicted pod takes
    to go away; ``device_plugin_restart_s`` how long a device-plugin restart
    keeps the node's GPUs unavailable.
    """

    default_device_plugin_config: str = "mps-4"
    device_plugin_configs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    device_plugin_restart_s: float = 20.0
    max_unavailable_per_deployment: int = 1
    termination_grace_s: float = 5.0
    eviction_retry_s: float = 5.0

    def __post_init__(self) -> None:
        device_plugin_replicas(self.default_device_plugin_config,
                               where="sim.default_device_plugin_config")
        if not isinstance(self.device_plugin_configs, Mapping):
            raise ValidationError("sim.device_plugin_configs",
                                  "must be a table of node name = config name")
        for node, config in self.device_plugin_configs.items():
            device_plugin_replicas(config, where=f"sim.device_plugin_configs.{node}")
        object.__setattr__(self, "device_plugin_configs",
                           MappingProxyType({str(k): v
                                             for k, v in self.device_plugin_configs.items()}))
        for name in ("device_plugin_restart_s", "termination_grace_s", "eviction_retry_s"):
            value = number(f"sim.{name}", getattr(self, name))
            if value < 0 or (value == 0 and name == "eviction_retry_s"):
                raise ValidationError(f"sim.{name}", "must be a number > 0"
                                      if name == "eviction_retry_s" else "must be a number ≥ 0")
            object.__setattr__(self, name, value)
        budget = integer("sim.max_unavailable_per_deployment",
                         self.max_unavailable_per_deployment)
        if budget < 0:
            raise ValidationError("sim.max_unavailable_per_deployment", "must be ≥ 0")
        object.__setattr__(self, "max_unavailable_per_deployment", budget)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SimSettings:
        """From the ``[sim]`` table; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise ValidationError(f"sim.{key}", f"unknown setting; expected one of "
                                                    f"{', '.join(sorted(known))}")
        return cls(**dict(raw))


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
    sim: SimSettings = field(default_factory=SimSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)


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
        sim=SimSettings.from_mapping(_table(raw, "sim") if "sim" in raw else {}),
        runtime=RuntimeSettings.from_mapping(raw.get("runtime", {})),
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
