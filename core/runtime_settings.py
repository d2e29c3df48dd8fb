"""Where this process runs and what it connects to (settings section ``[runtime]``).

Why: environment variables are read in one place only, the settings source
(``core.adapters.settings_source``), which maps the documented variables
(``DATABASE_URL``, ``GSC_CLUSTER``, ``PROMETHEUS_URL``, …) onto these keys;
everything else — bootstrap, the store, the Kubernetes adapter, the
controller's command-line defaults — reads the validated values from here.
A bad value is refused at start-up with the variable's (or key's) name,
never as a traceback from a bare ``float()``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from core.errors import ValidationError
from core.validate import integer, number

# Environment variable → runtime key ("controller.x" for the controller's table).
ENV_KEYS: Mapping[str, str] = MappingProxyType({
    "DATABASE_URL": "database_url",
    "GSC_CLUSTER": "cluster",
    "PROMETHEUS_URL": "prometheus_url",
    "GSC_MONITOR_INTERVAL_S": "monitor_interval_s",
    "GSC_BACKFILL_HOURS": "backfill_hours",
    "GSC_EMBEDDED_CONTROLLER": "embedded_controller",
    "KUBECONFIG": "kubeconfig",
    "KUBERNETES_SERVICE_HOST": "kubernetes_service_host",
    "HOSTNAME": "hostname",
    # glibc's own variable: read by the C library at start-up and by the settings alike,
    # so an operator's value is the one both apply.
    "MALLOC_ARENA_MAX": "malloc_arena_max",
})
# GSC_KUBE_<NAME> → kube.<name> (the Kubernetes adapter's options).
ENV_KUBE_PREFIX = "GSC_KUBE_"
CLUSTERS = ("embedded", "kubernetes")
# A host name to bind (an IP address is checked by ``ipaddress``).
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _bind_host(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(_HOST.fullmatch(value)) and not value.replace(".", "").isdigit()
    return True


def _name(key: str) -> str:
    env = next((var for var, k in ENV_KEYS.items() if k == key), None)
    return f"{env} (runtime.{key})" if env else f"runtime.{key}"


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise ValidationError(_name(key), "must be 0 or 1 (or true / false)")


@dataclass(frozen=True)
class ControllerSettings:
    """The controller process's defaults (its command-line flags override them).

    ``metrics_host``: the address its ``/metrics`` server binds, loopback unless
    configured (the Deployment sets ``0.0.0.0`` so that Prometheus can scrape the
    pod); ``embedded_metrics_port``: where a console that runs the controller in
    its own process (embedded mode) serves that controller's ``/metrics``, on
    ``metrics_host`` too (0: not served)."""

    interval_s: float = 2.0
    lease_ttl_s: float = 45.0
    claim_lease_s: float = 120.0
    metrics_port: int = 9102
    metrics_host: str = "127.0.0.1"
    embedded_metrics_port: int = 9103

    def __post_init__(self) -> None:
        for name in ("interval_s", "lease_ttl_s", "claim_lease_s"):
            value = number(f"runtime.controller.{name}", getattr(self, name))
            if value <= 0:
                raise ValidationError(f"runtime.controller.{name}", "must be > 0")
            object.__setattr__(self, name, value)
        if self.lease_ttl_s <= self.interval_s:
            raise ValidationError("runtime.controller.lease_ttl_s",
                                  "must be longer than one iteration (interval_s)")
        for name in ("metrics_port", "embedded_metrics_port"):
            port = integer(f"runtime.controller.{name}", getattr(self, name))
            if not 0 <= port <= 65535:
                raise ValidationError(f"runtime.controller.{name}", "must be within 0..65535")
            object.__setattr__(self, name, port)
        host = self.metrics_host.strip() if isinstance(self.metrics_host, str) else None
        if not _bind_host(host):
            raise ValidationError("runtime.controller.metrics_host",
                                  "must be an IP address or a host name to bind, "
                                  "e.g. 127.0.0.1 (loopback) or 0.0.0.0 (every interface)")
        object.__setattr__(self, "metrics_host", host)


@dataclass(frozen=True)
class RuntimeSettings:
    """What this process connects to; empty text means "not configured"."""

    database_url: str = ""  # empty: the SQLite file under ./var/
    cluster: str = "embedded"
    prometheus_url: str = ""
    monitor_interval_s: float = 30.0
    backfill_hours: float = 3.0
    embedded_controller: bool = True
    # glibc malloc arenas per process (0: glibc's default, 8 per core). Threads that
    # allocate at once each get an arena of their own whose freed pages are kept: at
    # 5,000 GPUs the backfilling console peaked ~70 MB higher with the default.
    malloc_arena_max: int = 2
    kubeconfig: str = ""
    kubernetes_service_host: str = ""  # set inside a pod: use the service account
    hostname: str = ""  # the pod's name in Kubernetes
    kube: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    controller: ControllerSettings = field(default_factory=ControllerSettings)

    def __post_init__(self) -> None:
        for key in ("database_url", "prometheus_url", "kubeconfig", "kubernetes_service_host",
                    "hostname"):
            value = getattr(self, key)
            if not isinstance(value, str):
                raise ValidationError(_name(key), "must be text")
            if len(value) > 4096:
                raise ValidationError(_name(key), "is longer than 4096 characters")
            object.__setattr__(self, key, value.strip())
        cluster = str(self.cluster).strip().lower() or "embedded"
        if cluster not in CLUSTERS:
            raise ValidationError(_name("cluster"), "must be 'embedded' or 'kubernetes'")
        object.__setattr__(self, "cluster", cluster)
        interval = number(_name("monitor_interval_s"), self.monitor_interval_s)
        if not 1 <= interval <= 3600:
            raise ValidationError(_name("monitor_interval_s"), "must be within 1..3600 s")
        object.__setattr__(self, "monitor_interval_s", interval)
        hours = number(_name("backfill_hours"), self.backfill_hours)
        if not 0 <= hours <= 24 * 90:
            raise ValidationError(_name("backfill_hours"), "must be within 0..2160 h")
        object.__setattr__(self, "backfill_hours", hours)
        object.__setattr__(self, "embedded_controller",
                           _flag("embedded_controller", self.embedded_controller))
        arenas = integer(_name("malloc_arena_max"), self.malloc_arena_max)
        if not 0 <= arenas <= 256:
            raise ValidationError(_name("malloc_arena_max"),
                                  "must be within 0..256 (0: glibc's default)")
        object.__setattr__(self, "malloc_arena_max", arenas)
        if not isinstance(self.kube, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.kube.items()):
            raise ValidationError("runtime.kube", "must be a table of text values")
        object.__setattr__(self, "kube", MappingProxyType(
            {k: v.strip() for k, v in self.kube.items()}))

    @property
    def in_cluster(self) -> bool:
        return bool(self.kubernetes_service_host)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RuntimeSettings:
        """From the ``[runtime]`` table; unknown keys are refused."""
        if not isinstance(raw, Mapping):
            raise ValidationError("runtime", "must be a table")
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise ValidationError(f"runtime.{key}", "unknown setting; expected one of "
                                                        f"{', '.join(sorted(known))}")
        values = dict(raw)
        controller = values.pop("controller", {})
        if not isinstance(controller, Mapping):
            raise ValidationError("runtime.controller", "must be a table")
        ctl_known = {f.name for f in fields(ControllerSettings)}
        for key in controller:
            if key not in ctl_known:
                raise ValidationError(f"runtime.controller.{key}", "unknown setting")
        return cls(**values, controller=ControllerSettings(**dict(controller)))


def env_mapping(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``[runtime]`` keys the documented environment variables set (text values)."""
    out: dict[str, Any] = {}
    for var, key in ENV_KEYS.items():
        if var in env:
            out[key] = env[var]
    kube = {var[len(ENV_KUBE_PREFIX):].lower(): value for var, value in env.items()
            if var.startswith(ENV_KUBE_PREFIX)}
    if kube:
        out["kube"] = kube
    return out
