"""Settings: the defaults of SPEC.md, overridable from one file and the environment.

This module is pure: it turns an already-read mapping into validated, typed
settings and names the offending key on any error. Reading files and the
environment is the job of ``core.adapters.settings_source``.

Invariants: every key of every section is known or refused, naming the key
(``SECTIONS`` lists the sections; the tables keyed by names an operator
chooses are the catalog's GPU types, the fleet's counts per type,
``autoscaling.deployments`` and ``sim.device_plugin_configs``); every value is
type-checked before it is used; money is ``Decimal`` and may be written as a
plain number (``0.15``), a quoted decimal (``"0.15"``) or an integer, and a
float is read through its shortest decimal form, so ``0.15`` is exactly
``Decimal("0.15")``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from core.alerts import AlertThresholds
from core.auth_settings import AuthSettings
from core.autoscale import AutoscaleSettings
from core.batch import UploadLimits
from core.catalog import Catalog
from core.classify import ClassPolicy, ClassRules
from core.errors import ValidationError
from core.model import MIB_PER_GB, GpuType, SchedulerWeights, WorkloadClass
from core.mps.device_plugin import EXCLUSIVE_CONFIG, MPS_CONFIG_PREFIX, config_name
from core.mps.layout import MAX_MPS_CLIENTS
from core.notify_settings import NotifySettings
from core.retention_settings import RetentionSettings
from core.rollout_settings import RolloutSettings
from core.runtime_settings import RuntimeSettings
from core.slo_settings import SloSettings
from core.validate import integer, kind_of, number, show, text

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


MAX_TWIN_QPS = 100_000.0  # per hour of [sim] hourly_qps: more is a typo, and a memory hazard
MAX_BURSTS_PER_HOUR = 60.0


def _hourly_qps(raw: Any) -> tuple[float, ...]:
    """``[sim] hourly_qps``: empty, one number (a flat day) or 24, each in 0..MAX_TWIN_QPS."""
    where = "sim.hourly_qps"
    values = [raw] if isinstance(raw, int | float) and not isinstance(raw, bool) else raw
    if not isinstance(values, list | tuple) or len(values) not in (0, 1, 24):
        raise ValidationError(where, "must be one number or a list of 24, one per hour (UTC)")
    out = []
    for i, raw_value in enumerate(values):
        value = number(f"{where}[{i}]", raw_value)
        if not 0 <= value <= MAX_TWIN_QPS:
            raise ValidationError(f"{where}[{i}]", f"must be in 0..{MAX_TWIN_QPS:,.0f} QPS")
        out.append(value)
    return tuple(out * 24 if len(out) == 1 else out)


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
    # A bound pod is Running this long after it was bound (image pull, weights loaded).
    pod_startup_s: float = 60.0
    # How the twin spreads a deployment's requests over its replicas: "least_work" (as the
    # llm-d and AIBrix gateways do) or "uniform" (as a Kubernetes Service does).
    routing: str = "least_work"
    # The twin's fleet QPS at each hour of the day (UTC), 24 values, or one value for a flat
    # day; empty: the built-in diurnal profile (25 QPS at 03:00, 300 at 11:00).
    hourly_qps: tuple[float, ...] = ()
    # Random bursts (1.2-1.8x for 30-240 s) per simulated hour, on average.
    bursts_per_hour: float = 1.0

    def __post_init__(self) -> None:
        if self.routing not in ("least_work", "uniform"):
            raise ValidationError("sim.routing", "must be 'least_work' or 'uniform'")
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
        for name in ("device_plugin_restart_s", "termination_grace_s", "eviction_retry_s",
                     "pod_startup_s"):
            value = number(f"sim.{name}", getattr(self, name))
            if value < 0 or (value == 0 and name == "eviction_retry_s"):
                raise ValidationError(f"sim.{name}", "must be a number > 0"
                                      if name == "eviction_retry_s" else "must be a number ≥ 0")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "hourly_qps", _hourly_qps(self.hourly_qps))
        bursts = number("sim.bursts_per_hour", self.bursts_per_hour)
        if not 0 <= bursts <= MAX_BURSTS_PER_HOUR:
            raise ValidationError("sim.bursts_per_hour", f"must be in 0..{MAX_BURSTS_PER_HOUR}")
        object.__setattr__(self, "bursts_per_hour", bursts)
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
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    uploads: UploadLimits = field(default_factory=UploadLimits)
    auth: AuthSettings = field(default_factory=AuthSettings)
    slo: SloSettings = field(default_factory=SloSettings)
    rollouts: RolloutSettings = field(default_factory=RolloutSettings)


# The sections of a settings mapping and, for the fixed tables parsed here, their keys
# (the other sections' parsers refuse unknown keys themselves).
SECTIONS = ("catalog", "pricing", "placement", "classes", "fleet", "alerts", "gates",
            "autoscaling", "feedback", "sim", "runtime", "retention", "uploads",
            "notify", "auth", "slo", "rollouts")
GPU_TYPE_KEYS = ("memory_gb", "tdp_w", "tops", "idle_w", "price_per_gpu_hour",
                 "dense_int8_tops", "sparse_int8_tops", "dense_bf16_tflops", "mig_capable")
PRICING_KEYS = ("electricity_per_kwh", "as_of")
PLACEMENT_KEYS = ("throughput_figure", "max_utilization", "max_mps_clients_per_gpu",
                  "memory_headroom", "weights")
CLASS_KEYS = ("max_gb", "share_pct", "preferred", "allowed")
GATES_KEYS = ("qps_bands",)
QPS_BAND_KEYS = ("safe", "caution", "high_risk")
DEPLOYMENT_BOUND_KEYS = ("min_replicas", "max_replicas")
# Money above this is a typo (prices per GPU-hour and per kWh); it also keeps Decimal sane.
MAX_PRICE = Decimal(1_000_000)
_MAX_GPU_TYPE_NAME = 32  # the store's column


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
    """Validate a settings mapping (defaults already merged in); unknown keys are refused."""
    _only(raw, SECTIONS, None)
    catalog_raw = _table(raw, "catalog")
    pricing = _table(raw, "pricing")
    _only(pricing, PRICING_KEYS, "pricing")
    placement = _table(raw, "placement")
    _only(placement, PLACEMENT_KEYS, "placement")
    types = [_gpu_type(name, catalog_raw[name]) for name in catalog_raw]
    catalog = Catalog.of(
        types,
        electricity_per_kwh=_decimal("pricing.electricity_per_kwh",
                                     pricing.get("electricity_per_kwh")),
        throughput_figure=text("placement.throughput_figure",
                               placement.get("throughput_figure", "tops"), max_length=32),
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
            raise ValidationError(f"fleet.{_key(name)}", "is neither gpus_per_node nor a GPU "
                                                         "type in the catalog")
        counts[name] = integer(f"fleet.{name}", count)
        if counts[name] < 0:
            raise ValidationError(f"fleet.{name}", "must be ≥ 0")
    gates = _table(raw, "gates")
    _only(gates, GATES_KEYS, "gates")
    bands_raw = _table(gates, "qps_bands", "gates.qps_bands")
    _only(bands_raw, QPS_BAND_KEYS, "gates.qps_bands")
    bands = QpsBands(*(number(f"gates.qps_bands.{k}", bands_raw.get(k))
                       for k in QPS_BAND_KEYS))
    if not (0 <= bands.safe <= bands.caution <= bands.high_risk):
        raise ValidationError("gates.qps_bands", "must satisfy safe ≤ caution ≤ high_risk")
    autoscaling = _table(raw, "autoscaling")
    _deployment_bounds(autoscaling)
    as_of = pricing.get("as_of", "")
    return Settings(
        catalog=catalog,
        classes=classes,
        placement=PlacementSettings(max_util, max_clients, headroom, weights),
        fleet=FleetSettings(counts, gpus_per_node),
        # TOML reads an unquoted date (as_of = 2025-01-01) as a date: that is fine too.
        prices_as_of=as_of.isoformat() if isinstance(as_of, date)
        else text("pricing.as_of", as_of, max_length=64),
        alerts=AlertThresholds.from_mapping(_table(raw, "alerts")),
        qps_bands=bands,
        autoscaling=AutoscaleSettings.from_mapping(autoscaling),
        feedback=_feedback_policy(_table(raw, "feedback")),
        sim=SimSettings.from_mapping(_table(raw, "sim") if "sim" in raw else {}),
        runtime=RuntimeSettings.from_mapping(raw.get("runtime", {})),
        retention=RetentionSettings.from_mapping(raw.get("retention", {})),
        notify=NotifySettings.from_mapping(raw.get("notify", {})),
        uploads=UploadLimits.from_mapping(_table(raw, "uploads") if "uploads" in raw else {}),
        auth=AuthSettings.from_mapping(raw.get("auth", {})),
        slo=SloSettings.from_mapping(raw.get("slo", {})),
        rollouts=RolloutSettings.from_mapping(raw.get("rollouts", {})),
    )


def _gpu_type(name: Any, raw: Any) -> GpuType:
    if not isinstance(name, str) or not _GPU_TYPE_NAME.match(name):
        raise ValidationError(f"catalog.{_key(name)}", "a GPU type's name must be 1 to "
                                                       f"{_MAX_GPU_TYPE_NAME} letters, digits, "
                                                       "'-', '_' or '.'")
    where = f"catalog.{name}"
    if not isinstance(raw, Mapping):
        raise ValidationError(where, "must be a table of settings")
    _only(raw, GPU_TYPE_KEYS, where)

    def num(key: str) -> float:
        return number(f"{where}.{key}", raw.get(key))

    mig_capable = raw.get("mig_capable", False)
    if not isinstance(mig_capable, bool):
        raise ValidationError(f"{where}.mig_capable", f"must be true or false, not "
                                                      f"{show(mig_capable)}")
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
        mig_capable=mig_capable,
    )


def _classes(raw: Mapping[str, Any], catalog: Catalog) -> ClassRules:
    _only(raw, tuple(c.value for c in WorkloadClass), "classes")
    policies = {}
    for cls in WorkloadClass:
        where = f"classes.{cls.value}"
        table = _table(raw, cls.value, where)
        _only(table, CLASS_KEYS, where)
        preferred = text(f"{where}.preferred", table.get("preferred", ""), max_length=64)
        if preferred not in catalog.types:
            raise ValidationError(f"{where}.preferred", f"{show(preferred)} is not in the "
                                                        "catalog")
        allowed_raw = table.get("allowed", [])
        if not isinstance(allowed_raw, list | tuple):
            raise ValidationError(f"{where}.allowed", f"must be a list of GPU types, not "
                                                      f"{kind_of(allowed_raw)}")
        allowed = frozenset(text(f"{where}.allowed", t, max_length=64) for t in allowed_raw)
        for t in allowed:
            if t not in catalog.types:
                raise ValidationError(f"{where}.allowed", f"{show(t)} is not in the catalog")
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


def _deployment_bounds(autoscaling: Mapping[str, Any]) -> None:
    """``[autoscaling.deployments."ns/model"]`` tables hold only the replica bounds."""
    deployments = autoscaling.get("deployments", {})
    if not isinstance(deployments, Mapping):
        raise ValidationError("autoscaling.deployments", "must be a table of deployments")
    for name, bounds in deployments.items():
        where = f"autoscaling.deployments.{_key(name)}"
        if isinstance(bounds, Mapping):
            _only(bounds, DEPLOYMENT_BOUND_KEYS, where)


def _only(table: Mapping[Any, Any], known: tuple[str, ...], where: str | None) -> None:
    """Refuse the first key of ``table`` not in ``known``, naming it."""
    for key in table:
        if key not in known:
            name = _key(key) if where is None else f"{where}.{_key(key)}"
            kind = "section" if where is None else "setting"
            raise ValidationError(name, f"unknown {kind}; expected one of "
                                        f"{', '.join(sorted(known))}")


def _key(key: Any) -> str:
    """A key as it can appear in a field name (text is cut short, other types described)."""
    return key if isinstance(key, str) and len(key) <= 64 else show(key)


def _table(raw: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise ValidationError(where or key, "must be a table of settings")
    return value


def _decimal(name: str, value: Any) -> Decimal:
    """Money: an integer, a plain number (``0.15``) or a quoted decimal (``"0.15"``).

    A float is read through ``str()``, its shortest decimal form, so ``0.15``
    becomes ``Decimal("0.15")`` and not the binary value's 0.1499999….
    """
    if value is None:
        raise ValidationError(name, "is required: an amount such as 1.84")
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValidationError(name, f"must be an amount such as 1.84, not {kind_of(value)}")
    if isinstance(value, int) and value.bit_length() > 64:
        raise ValidationError(name, f"must be at most {MAX_PRICE}")
    if isinstance(value, str) and len(value) > 64:
        raise ValidationError(name, f"{show(value)} is not a decimal number")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError(name, f"{show(value)} is not a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise ValidationError(name, "must be a finite amount ≥ 0")
    if amount > MAX_PRICE:
        raise ValidationError(name, f"must be at most {MAX_PRICE}")
    return amount


_GPU_TYPE_NAME = re.compile(rf"^[A-Za-z0-9][-A-Za-z0-9_.]{{0,{_MAX_GPU_TYPE_NAME - 1}}}$")
