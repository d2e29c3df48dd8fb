"""Say, before anything is applied, what a backend cannot express or silently drops.

A layout is an intention (who gets which share of which GPU); each backend
can realise only part of it. The device plugin shares GPUs node-wide in equal
replicas and ignores unknown keys, ``rename`` and ``devices`` under MPS; the
DRA driver gives each claim its own GPU and cannot put MPS on MIG devices with
a ``GpuConfig``; the per-pod environment can only narrow, never enforce a sum.
``lint`` turns each such gap into a ``Finding`` the UI can show next to the
compiled YAML.

Invariant kept here: linting is pure and total. It never raises on a layout
or a pasted config (however malformed) and returns findings in a stable order
(node by node, GPU by GPU), so that two runs over the same input compare equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.errors import ValidationError
from core.mps import device_plugin as dp
from core.mps.dra import DEVICE_CLASS
from core.mps.layout import MAX_MPS_CLIENTS, GpuLayout


class Backend(StrEnum):
    DEVICE_PLUGIN = "device-plugin"
    DRA = "dra"
    ENV = "env"


ERROR = "error"
WARNING = "warning"

# Finding codes (stable: the UI and tests key on them).
UNKNOWN_FIELD = "unknown-field"
BAD_VERSION = "unsupported-version"
NOT_A_MAPPING = "not-a-mapping"
RENAME_IGNORED = "rename-ignored"
DEVICES_IGNORED = "devices-ignored"
REPLICAS_BELOW_TWO = "replicas-below-2"
REPLICAS_ABOVE_LIMIT = "replicas-above-limit"
RESOURCE_NOT_GPU = "resource-not-supported"
MIXED_SHARING = "time-slicing-and-mps"
MIG_STRATEGY_MIXED = "mig-strategy-mixed"
MPS_ON_MIG = "mps-on-mig"
TOO_MANY_CLIENTS = "too-many-clients"
NODE_WIDE_CONFIG = "node-wide-config"
THREAD_SHARE_CAPPED = "thread-share-capped"
MEMORY_ABOVE_CAP = "memory-above-cap"
DRA_CLAIM_PER_POD = "claim-per-pod"
THREAD_OVERCOMMIT = "thread-overcommit"
MEMORY_OVERCOMMIT = "memory-overcommit"


@dataclass(frozen=True, slots=True)
class Finding:
    backend: str
    severity: str  # "error" (will not work as planned) or "warning" (works, differently)
    node: str
    gpu: str | None  # GpuLayout.key, or None for a node- or config-wide finding
    code: str
    message: str


def lint(
    layouts_by_node: Mapping[str, Sequence[GpuLayout]],
    *,
    backend: Backend | str = Backend.DEVICE_PLUGIN,
    max_clients: int = MAX_MPS_CLIENTS,
) -> list[Finding]:
    """Findings for compiling ``layouts_by_node`` to ``backend``."""
    try:
        kind = Backend(backend)
    except ValueError:
        raise ValidationError(
            "backend", f"{backend!r} is not one of {', '.join(b.value for b in Backend)}"
        ) from None
    findings: list[Finding] = []
    for node in sorted(layouts_by_node):
        layouts = sorted(layouts_by_node[node], key=lambda layout: layout.gpu_index)
        if not layouts:
            continue
        if kind is Backend.DEVICE_PLUGIN:
            findings += _lint_device_plugin_node(node, layouts, max_clients=max_clients)
        elif kind is Backend.DRA:
            findings += _lint_dra_node(node, layouts, max_clients=max_clients)
        else:
            findings += _lint_env_node(node, layouts, max_clients=max_clients)
    return findings


def _finding(
    backend: Backend, *, severity: str, node: str, gpu: str | None, code: str, message: str,
) -> Finding:
    return Finding(backend=backend.value, severity=severity, node=node, gpu=gpu, code=code,
                   message=message)


def _too_many_clients(
    backend: Backend, layout: GpuLayout, *, max_clients: int,
) -> list[Finding]:
    if layout.clients <= max_clients:
        return []
    return [_finding(
        backend, severity=ERROR, node=layout.node, gpu=layout.key, code=TOO_MANY_CLIENTS,
        message=f"{layout.clients} MPS clients on {layout.key}; an MPS server accepts at most "
        f"{max_clients} per GPU")]


# --- device plugin -------------------------------------------------------------------------


def _lint_device_plugin_node(
    node: str, layouts: list[GpuLayout], *, max_clients: int,
) -> list[Finding]:
    backend = Backend.DEVICE_PLUGIN
    replicas = dp.node_replicas(layouts)
    name, config = dp.config_name(replicas), dp.plugin_config(replicas)
    out = lint_device_plugin_config(config, node=node)
    for layout in layouts:
        out += _too_many_clients(backend, layout, max_clients=max_clients)
        if layout.mig_enabled and (layout.clients or replicas >= 2):
            out.append(_finding(
                backend, severity=ERROR, node=node, gpu=layout.key, code=MPS_ON_MIG,
                message=f"{layout.key} has MIG enabled; the device plugin does not share MIG "
                "devices through MPS (disable MIG or place these clients elsewhere)"))
        own = dp.gpu_replicas(layout)
        if own != replicas:
            out.append(_finding(
                backend, severity=WARNING, node=node, gpu=layout.key, code=NODE_WIDE_CONFIG,
                message=f"{layout.key} alone would need "
                f"{dp.config_name(own)!r}, but the config is node-wide and {node} gets "
                f"{name!r}: each of its GPUs is split into {replicas} replicas"))
        if replicas < 2:
            continue
        cap = dp.thread_cap_pct(replicas)
        memory_cap = dp.memory_cap_mib(layout.memory_total_mib, replicas)
        for s in layout.slices:
            if s.thread_pct > cap:
                out.append(_finding(
                    backend, severity=WARNING, node=node, gpu=layout.key, code=THREAD_SHARE_CAPPED,
                    message=f"{s.owner} asks {s.thread_pct} % of SM threads, but with {replicas} "
                    f"replicas the plugin gives each client {cap} %: capped by "
                    f"{s.thread_pct - cap} points (the pod's env can only lower it)"))
            if s.memory_mib > memory_cap:
                out.append(_finding(
                    backend, severity=ERROR, node=node, gpu=layout.key, code=MEMORY_ABOVE_CAP,
                    message=f"{s.owner} needs {s.memory_mib} MiB, but with {replicas} replicas "
                    f"each client may pin at most {memory_cap} MiB of {layout.key} "
                    f"({s.memory_mib - memory_cap} MiB short)"))
    return out


def lint_device_plugin_config(config: Any, *, node: str = "") -> list[Finding]:
    """Findings for a raw device-plugin config (compiled, or pasted by an operator).

    ``node`` labels the findings (a node name or the config's name).
    """
    if not isinstance(config, Mapping):
        return [_config_error(node, code=NOT_A_MAPPING, message=(
            "a device-plugin config is a mapping with 'version: v1' at the top"))]
    out = [
        _config_error(node, code=UNKNOWN_FIELD, message=(
            f"'{path}' is not a field of the plugin's config v1; the plugin ignores it "
            "without a word"))
        for path in dp.unknown_fields(config)
    ]
    version = config.get("version", dp.CONFIG_VERSION)
    if version != dp.CONFIG_VERSION:
        out.append(_config_error(node, code=BAD_VERSION, message=(
            f"version {version!r}: the plugin only reads version 'v1' and refuses to start "
            "with any other")))
    sharing = config.get("sharing")
    if not isinstance(sharing, Mapping):
        return out
    mps = sharing.get("mps")
    if not isinstance(mps, Mapping):
        return out
    if sharing.get("timeSlicing"):
        out.append(_config_error(node, code=MIXED_SHARING, message=(
            "both sharing.timeSlicing and sharing.mps are set; they are mutually exclusive "
            "and the plugin uses only MPS")))
    flags = config.get("flags")
    if isinstance(flags, Mapping) and flags.get("migStrategy") == "mixed":
        out.append(_config_error(node, code=MIG_STRATEGY_MIXED, message=(
            "migStrategy 'mixed' with MPS sharing: the plugin refuses to start")))
    resources = mps.get("resources")
    if not isinstance(resources, list) or not resources:
        out.append(_config_error(node, code=REPLICAS_BELOW_TWO, message=(
            "sharing.mps has no resources: the plugin does not share GPUs")))
        return out
    for i, resource in enumerate(resources):
        where = f"sharing.mps.resources[{i}]"
        if isinstance(resource, Mapping):
            out += _lint_mps_resource(resource, where=where, node=node)
        else:
            out.append(_config_error(node, code=NOT_A_MAPPING, message=(
                f"{where} must be a mapping with name and replicas")))
    return out


def _config_error(node: str, *, code: str, message: str) -> Finding:
    return _finding(Backend.DEVICE_PLUGIN, severity=ERROR, node=node, gpu=None, code=code,
                    message=message)


def _lint_mps_resource(resource: Mapping[str, Any], *, where: str, node: str) -> list[Finding]:
    out: list[Finding] = []
    if "rename" in resource:
        out.append(_config_error(node, code=RENAME_IGNORED, message=(
            f"{where}.rename is not supported with MPS; the plugin drops it and advertises "
            "the resource under its own name")))
    if "devices" in resource:
        out.append(_config_error(node, code=DEVICES_IGNORED, message=(
            f"{where}.devices is not supported with MPS; the plugin drops it and shares "
            "every GPU of the node")))
    name = resource.get("name")
    if name != dp.GPU_RESOURCE:
        out.append(_config_error(node, code=RESOURCE_NOT_GPU, message=(
            f"{where}.name is {name!r}; MPS shares only full GPUs ({dp.GPU_RESOURCE})")))
    replicas = resource.get("replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        out.append(_config_error(node, code=REPLICAS_BELOW_TWO, message=(
            f"{where}.replicas is {replicas!r}; it must be a whole number ≥ 2")))
    elif replicas < 2:
        out.append(_config_error(node, code=REPLICAS_BELOW_TWO, message=(
            f"{where}.replicas is {replicas}; with fewer than 2 replicas the plugin does not "
            "enable MPS at all (use a config without sharing)")))
    elif replicas > MAX_MPS_CLIENTS:
        out.append(_config_error(node, code=REPLICAS_ABOVE_LIMIT, message=(
            f"{where}.replicas is {replicas}; the plugin refuses more than "
            f"{MAX_MPS_CLIENTS} MPS clients per GPU")))
    return out


# --- DRA -----------------------------------------------------------------------------------


def _lint_dra_node(node: str, layouts: list[GpuLayout], *, max_clients: int) -> list[Finding]:
    backend = Backend.DRA
    out: list[Finding] = []
    for layout in layouts:
        out += _too_many_clients(backend, layout, max_clients=max_clients)
        if layout.mig_enabled and layout.clients:
            out.append(_finding(
                backend, severity=ERROR, node=node, gpu=layout.key, code=MPS_ON_MIG,
                message=f"{layout.key} has MIG enabled: it is not allocatable as a full "
                f"'{DEVICE_CLASS}' device, so a GpuConfig never applies to it "
                "(MIG devices need a MigDeviceConfig on class mig.nvidia.com)"))
        if layout.clients > 1:
            out.append(_finding(
                backend, severity=WARNING, node=node, gpu=layout.key, code=DRA_CLAIM_PER_POD,
                message=f"{layout.clients} clients share {layout.key}, but a device goes to one "
                "ResourceClaim only: per-pod claim templates would each need a GPU; "
                "reference one shared ResourceClaim from all of these pods"))
    return out


# --- per-pod environment -------------------------------------------------------------------


def _lint_env_node(node: str, layouts: list[GpuLayout], *, max_clients: int) -> list[Finding]:
    backend = Backend.ENV
    out: list[Finding] = []
    for layout in layouts:
        out += _too_many_clients(backend, layout, max_clients=max_clients)
        if layout.share_used_pct > 100:
            out.append(_finding(
                backend, severity=ERROR, node=node, gpu=layout.key, code=THREAD_OVERCOMMIT,
                message=f"the clients of {layout.key} ask {layout.share_used_pct} % of SM threads "
                f"in total ({layout.share_used_pct - 100} points over 100 %); MPS does not "
                "check the sum, they would simply contend"))
        if layout.memory_free_mib < 0:
            out.append(_finding(
                backend, severity=ERROR, node=node, gpu=layout.key, code=MEMORY_OVERCOMMIT,
                message=f"pinned memory on {layout.key} adds up to {layout.memory_used_mib} MiB of "
                f"{layout.memory_total_mib} MiB ({-layout.memory_free_mib} MiB over)"))
    return out
