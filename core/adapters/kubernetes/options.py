"""Where the Kubernetes adapter looks and how patiently it waits (``KubeOptions``).

Why: the namespaces, selectors and the device plugin's ConfigMap differ per
cluster; they come from the Deployment's ``GSC_KUBE_*`` environment
(``options_from_env``) and are validated here, so a bad value is refused with
the field named before any call is made. Invariant: a ``KubeOptions`` that
exists is valid (names are DNS labels, times are finite and > 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.errors import ValidationError
from core.manifest import MANAGED_BY
from core.mps.device_plugin import GPU_RESOURCE

# Environment variables ``options_from_env`` reads (set in deploy/k8s).
ENV_NAMESPACE = "GSC_KUBE_NAMESPACE"
ENV_NODE_SELECTOR = "GSC_KUBE_NODE_SELECTOR"
ENV_POD_SELECTOR = "GSC_KUBE_POD_SELECTOR"
ENV_PLUGIN_NAMESPACE = "GSC_KUBE_DEVICE_PLUGIN_NAMESPACE"
ENV_PLUGIN_SELECTOR = "GSC_KUBE_DEVICE_PLUGIN_SELECTOR"
ENV_PLUGIN_CONFIG_MAP = "GSC_KUBE_DEVICE_PLUGIN_CONFIG_MAP"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


@dataclass(frozen=True, slots=True)
class KubeOptions:
    """Where the adapter looks and how patiently it waits.

    ``namespace``: the workload namespace (pods whose manifest names none are
    created there); ``node_selector``: label selector of the GPU nodes ("" =
    every node; nodes without GPUs are skipped); ``pod_selector``: the pods
    whose GPU slices count (the console's own); the device plugin's
    namespace, pod selector and ConfigMap of named configs;
    ``product_types``: exact ``nvidia.com/gpu.product`` → catalog type, for
    products whose name does not contain the type; ``strict_products``: raise
    on an unknown product instead of skipping the node; ``tolerated_taints``:
    taint keys model servers tolerate (``nvidia.com/gpu``: added by the
    ExtendedResourceToleration admission plugin to pods that request GPUs).
    Times in seconds.
    """

    namespace: str = "default"
    node_selector: str = ""
    pod_selector: str = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    device_plugin_namespace: str = "nvidia-device-plugin"
    device_plugin_selector: str = "app.kubernetes.io/name=nvidia-device-plugin"
    device_plugin_config_map: str = "nvidia-device-plugin-configs"
    product_types: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    strict_products: bool = False
    tolerated_taints: frozenset[str] = frozenset({GPU_RESOURCE})
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    retry_delay_s: float = 2.0
    poll_interval_s: float = 1.0
    conflict_retries: int = 5
    page_size: int = 500
    # Pod creations in flight at once (``bind_many``); a watch segment's length while
    # waiting for pods (the caller's heartbeat runs at least this often).
    bind_concurrency: int = 16
    watch_segment_s: int = 2
    # Worker processes that send a pass's pod creates (``create_pool``), the
    # ``bind_concurrency`` creates in flight shared among them; 0 = this process's threads.
    create_processes: int = 0

    def __post_init__(self) -> None:
        for name in ("namespace", "device_plugin_namespace"):
            if not DNS_LABEL.match(getattr(self, name)):
                raise ValidationError(f"kubernetes.{name}", "must be a lowercase DNS label")
        if not CONFIG_KEY.match(self.device_plugin_config_map):
            raise ValidationError("kubernetes.device_plugin_config_map",
                                  "must be a valid ConfigMap name")
        for name in ("connect_timeout_s", "request_timeout_s", "retry_delay_s",
                     "poll_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValidationError(f"kubernetes.{name}", "must be a number > 0")
        if self.conflict_retries < 0:
            raise ValidationError("kubernetes.conflict_retries", "must be ≥ 0")
        if self.page_size < 1:
            raise ValidationError("kubernetes.page_size", "must be ≥ 1")
        if not 1 <= self.bind_concurrency <= 256:
            raise ValidationError("kubernetes.bind_concurrency", "must be within 1..256")
        if not 0 <= self.create_processes <= 16:
            raise ValidationError("kubernetes.create_processes", "must be within 0..16")
        if not 1 <= self.watch_segment_s <= 60:
            raise ValidationError("kubernetes.watch_segment_s", "must be within 1..60 s")
        object.__setattr__(self, "product_types", MappingProxyType(dict(self.product_types)))


_SETTING_NAMES = ("namespace", "node_selector", "pod_selector", "device_plugin_namespace",
                  "device_plugin_selector", "device_plugin_config_map", "bind_concurrency",
                  "watch_segment_s", "create_processes")
_INT_SETTINGS = frozenset({"bind_concurrency", "watch_segment_s", "create_processes"})


def options_from_settings(values: Mapping[str, str]) -> KubeOptions:
    """``KubeOptions`` from the ``[runtime.kube]`` settings (``GSC_KUBE_<NAME>`` sets
    ``<name>``; the settings source maps them); unset names keep their default."""
    for key in values:
        if key not in _SETTING_NAMES:
            raise ValidationError(f"runtime.kube.{key}", "unknown setting; expected one of "
                                                         f"{', '.join(_SETTING_NAMES)}")
    fields: dict[str, Any] = {}
    for key, value in values.items():
        text = str(value).strip()
        if key in _INT_SETTINGS:
            try:
                fields[key] = int(text)
            except ValueError:
                raise ValidationError(f"runtime.kube.{key}", "must be a whole number") from None
        else:
            fields[key] = text
    return KubeOptions(**fields)


def options_from_env(env: Mapping[str, str]) -> KubeOptions:
    """``KubeOptions`` from a mapping of ``GSC_KUBE_*`` variables (tests, tools); the
    process environment itself is read only by the settings source."""
    names = {
        "namespace": ENV_NAMESPACE, "node_selector": ENV_NODE_SELECTOR,
        "pod_selector": ENV_POD_SELECTOR, "device_plugin_namespace": ENV_PLUGIN_NAMESPACE,
        "device_plugin_selector": ENV_PLUGIN_SELECTOR,
        "device_plugin_config_map": ENV_PLUGIN_CONFIG_MAP,
    }
    return options_from_settings({key: env[var] for key, var in names.items() if var in env})
