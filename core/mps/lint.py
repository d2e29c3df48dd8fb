"""Say, before anything is applied, what a backend cannot express or silently drops.

A layout is an intention (who gets which share of which GPU); each backend
can realise only part of it. The device plugin shares GPUs node-wide in equal
replicas; the DRA driver gives each claim its own GPU and cannot put MPS on
MIG devices with a ``GpuConfig``; the per-pod environment can only narrow,
never enforce a sum. ``lint`` turns each such gap into a ``Finding`` the UI
can show next to the compiled YAML.

A raw device-plugin config (``lint_device_plugin_config``) gets the real
plugin's verdict: its decoder as modelled in ``core.mps.plugin_schema`` (keys
matched case-insensitively in plain structs and exactly in the types with
their own decoder, unknown keys dropped), then the checks it runs at start-up
(``parseConfigFrom``, ``validateFlags``, ``DisableResourceNamingInConfig``).
Severity says what happens: ``error`` when the plugin refuses to start or pods
never match (or, past the MPS client limit, cannot run); ``warning`` when
something is dropped or changed without an error.

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
from core.mps import plugin_schema
from core.mps.dra import DEVICE_CLASS
from core.mps.layout import MAX_MPS_CLIENTS, GpuLayout


class Backend(StrEnum):
    DEVICE_PLUGIN = "device-plugin"
    DRA = "dra"
    ENV = "env"


ERROR = "error"
WARNING = "warning"

# Finding codes (stable: the UI and tests key on them).
# Raw device-plugin configs; the severity each gets is fixed by the plugin's behaviour.
UNKNOWN_FIELD = "unknown-field"  # warning: dropped by the decoder
KEY_SHADOWED = "key-shadowed"  # warning: two spellings of one key, one dropped
BAD_VERSION = "unsupported-version"  # error: refuses to start
NOT_A_MAPPING = "not-a-mapping"  # error: refuses to start
INVALID_VALUE = "invalid-value"  # error: refuses to start
INVALID_RESOURCE_NAME = "invalid-resource-name"  # error: refuses to start
NO_RESOURCES = "no-resources"  # error: refuses to start
REPLICAS_BELOW_TWO = "replicas-below-2"  # error: refuses to start
MIG_STRATEGY_MIXED = "mig-strategy-mixed"  # error: refuses to start with MPS
RENAME_BY_DEFAULT = "rename-by-default"  # error: pods asking for nvidia.com/gpu never match
REPLICAS_ABOVE_LIMIT = "replicas-above-limit"  # error: pods past the MPS limit cannot run
RENAME_IGNORED = "rename-ignored"  # warning: dropped at start-up
DEVICES_IGNORED = "devices-ignored"  # warning: reset to "all" at start-up
RESOURCES_IGNORED = "resources-ignored"  # warning: top-level resources dropped
RESOURCE_NOT_GPU = "resource-not-supported"  # warning: entry skipped, nothing shared
DUPLICATE_RESOURCE = "duplicate-resource"  # warning: entries overwrite each other
MIXED_SHARING = "time-slicing-and-mps"  # warning: time-slicing ignored
SHARING_EMPTY = "sharing-empty"  # warning: sharing.mps is null, nothing shared
EMPTY_CONFIG = "empty-config"  # warning: defaults, nothing shared
# Layouts.
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
    severity: str  # "error" (refused, never matches, cannot run) or "warning" (works, differently)
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

    ``node`` labels the findings (a node name or the config's name). The
    verdict is the plugin's own: its decoder (``plugin_schema.decode``), then
    the checks it runs at start-up; see the module docstring for the
    severities.
    """
    if config is None:
        return [_config_finding(node, WARNING, EMPTY_CONFIG, (
            "the config is empty: the plugin accepts it as 'version: v1' with all defaults "
            "and shares no GPU"))]
    if not isinstance(config, Mapping):
        return [_config_finding(node, ERROR, NOT_A_MAPPING, (
            "a device-plugin config is a mapping with 'version: v1' at the top; the plugin "
            "refuses to start on anything else"))]
    decoded = plugin_schema.decode(config)
    out = [_decoder_finding(node, issue) for issue in decoded.issues]
    value = decoded.value
    version = value.get("version")
    if isinstance(version, str) and version not in ("", dp.CONFIG_VERSION):
        out.append(_config_finding(node, ERROR, BAD_VERSION, (
            f"version {version!r}: the plugin only reads version 'v1' and refuses to start "
            "with any other (\"unknown version\")")))
    flags = value.get("flags") or {}
    out += _flag_findings(flags, decoded, node=node)
    out += _sharing_findings(value.get("sharing") or {}, flags, decoded, node=node)
    channel_ids = (value.get("imex") or {}).get("channelIDs")
    if isinstance(channel_ids, list) and channel_ids not in ([], [0]):
        out.append(_config_finding(node, ERROR, INVALID_VALUE, (
            f"{_shown(decoded, 'imex.channelIDs')} is {channel_ids}: the plugin accepts only "
            "[] or [0] and refuses to start")))
    resources = value.get("resources") or {}
    if any(resources.get(kind) for kind in ("gpus", "mig")):
        out.append(_config_finding(node, WARNING, RESOURCES_IGNORED, (
            f"'{_shown(decoded, 'resources')}' is not yet supported: the plugin drops it "
            "(it logs 'Ignoring...') and keeps its own names, nvidia.com/gpu for full GPUs")))
    return out


def _config_finding(node: str, severity: str, code: str, message: str) -> Finding:
    return _finding(Backend.DEVICE_PLUGIN, severity=severity, node=node, gpu=None, code=code,
                    message=message)


def _shown(decoded: plugin_schema.Decoded, canonical: str) -> str:
    """A key path as the operator wrote it (keys can differ in case from the schema)."""
    return decoded.written.get(canonical, canonical)


def _decoder_finding(node: str, issue: plugin_schema.Issue) -> Finding:
    kind, cause = issue.kind, issue.cause
    if kind is plugin_schema.IssueKind.DROPPED:
        exact = (f" (keys here are matched exactly, with their case: write '{issue.hint}')"
                 if issue.hint else "")
        return _config_finding(node, WARNING, UNKNOWN_FIELD, (
            f"'{issue.path}' is not a field of the plugin's config v1; the plugin drops it "
            f"without a word{exact}"))
    if kind is plugin_schema.IssueKind.SHADOWED:
        return _config_finding(node, WARNING, KEY_SHADOWED, (
            f"'{issue.path}' and '{issue.hint}' are the same field (keys here are matched "
            f"case-insensitively): the plugin applies '{issue.hint}', the last in its key "
            f"order, and drops '{issue.path}' without a word"))
    leaf = issue.field.rsplit(".", 1)[-1]
    refuses = f"{issue.path}: {issue.detail}; the plugin refuses to start"
    if leaf == "replicas":
        code, message = REPLICAS_BELOW_TWO, (
            f"{refuses} (it does not fall back to no sharing: a GPU that is not shared needs "
            "no sharing section at all)")
    elif leaf == "resources" and cause in (plugin_schema.Cause.MISSING,
                                           plugin_schema.Cause.EMPTY):
        code, message = NO_RESOURCES, (
            f"{issue.path} is missing or empty: the plugin refuses to start "
            "(\"no resources specified\"); it does not fall back to no sharing")
    elif leaf in ("name", "rename"):
        code, message = INVALID_RESOURCE_NAME, refuses
    elif cause is plugin_schema.Cause.TYPE and issue.detail.startswith("expects a mapping"):
        code, message = NOT_A_MAPPING, refuses
    else:
        code, message = INVALID_VALUE, refuses
    return _config_finding(node, ERROR, code, message)


# validateFlags (cmd/nvidia-device-plugin/main.go) and NewDeviceListStrategies (strategy.go).
_MIG_STRATEGIES = ("none", "single", "mixed")
_DISCOVERY_STRATEGIES = ("auto", "nvml", "tegra")
_DEVICE_ID_STRATEGIES = ("uuid", "index")
_DEVICE_LIST_STRATEGIES = ("envvar", "volume-mounts", "cdi-annotations", "cdi-cri")


def _flag_findings(
    flags: Mapping[str, Any], decoded: plugin_schema.Decoded, *, node: str,
) -> list[Finding]:
    plugin = flags.get("plugin") or {}
    checks = (("flags.migStrategy", flags.get("migStrategy"), _MIG_STRATEGIES),
              ("flags.deviceDiscoveryStrategy", flags.get("deviceDiscoveryStrategy"),
               _DISCOVERY_STRATEGIES),
              ("flags.plugin.deviceIDStrategy", plugin.get("deviceIDStrategy"),
               _DEVICE_ID_STRATEGIES))
    out = [_config_finding(node, ERROR, INVALID_VALUE, (
        f"{_shown(decoded, path)} is {value!r}: the plugin accepts only "
        f"{', '.join(allowed)} (values are matched exactly) and refuses to start"))
        for path, value, allowed in checks if isinstance(value, str) and value not in allowed]
    strategies = plugin.get("deviceListStrategy")
    if isinstance(strategies, list) and (
            not strategies or any(s not in _DEVICE_LIST_STRATEGIES for s in strategies)):
        out.append(_config_finding(node, ERROR, INVALID_VALUE, (
            f"{_shown(decoded, 'flags.plugin.deviceListStrategy')} is {strategies!r}: the "
            f"plugin needs at least one of {', '.join(_DEVICE_LIST_STRATEGIES)} and refuses "
            "to start otherwise")))
    return out


def _sharing_findings(
    sharing: Mapping[str, Any], flags: Mapping[str, Any], decoded: plugin_schema.Decoded, *,
    node: str,
) -> list[Finding]:
    out: list[Finding] = []
    mps = sharing.get("mps")
    if "mps" in sharing and mps is None:
        out.append(_config_finding(node, WARNING, SHARING_EMPTY, (
            f"{_shown(decoded, 'sharing.mps')} is empty: the plugin reads no MPS section and "
            "shares no GPU through MPS")))
    if not isinstance(mps, Mapping):
        time_slicing = sharing.get("timeSlicing")
        if isinstance(time_slicing, Mapping):
            out += _replicated_findings(time_slicing, "sharing.timeSlicing", decoded,
                                        node=node, mps=False)
        return out
    if "timeSlicing" in sharing:
        out.append(_config_finding(node, WARNING, MIXED_SHARING, (
            "both sharing.timeSlicing and sharing.mps are set: the plugin uses only MPS and "
            "ignores sharing.timeSlicing without a word")))
    if flags.get("migStrategy") == "mixed":
        written = _shown(decoded, "flags.migStrategy")
        folded = ("" if written == "flags.migStrategy" else
                  f" ('{written}' is matched case-insensitively, so it is applied)")
        out.append(_config_finding(node, ERROR, MIG_STRATEGY_MIXED, (
            f"migStrategy 'mixed' with MPS sharing{folded}: the plugin refuses to start "
            "(\"using --mig-strategy=mixed is not supported with MPS\")")))
    return out + _replicated_findings(mps, "sharing.mps", decoded, node=node, mps=True)


def _replicated_findings(
    replicated: Mapping[str, Any], where: str, decoded: plugin_schema.Decoded, *, node: str,
    mps: bool,
) -> list[Finding]:
    """What DisableResourceNamingInConfig (config.go) and the device map do to the entries."""
    out: list[Finding] = []
    entries = [(i, r) for i, r in enumerate(replicated.get("resources") or [])
               if isinstance(r, Mapping)]
    names = [r.get("name") for _, r in entries if _valid_name(r.get("name"))]
    if replicated.get("renameByDefault") is True and names:
        shared = ", ".join(f"{n}{plugin_schema.SHARED_SUFFIX}" for n in names)
        out.append(_config_finding(node, ERROR, RENAME_BY_DEFAULT, (
            f"{_shown(decoded, where + '.renameByDefault')} is true: the plugin advertises "
            f"{shared} instead of {', '.join(names)} (any rename is replaced by it), so pods "
            f"asking for {names[0]} never match; leave renameByDefault false")))
    for i, resource in entries:
        at = _shown(decoded, f"{where}.resources[{i}]")
        name, devices = resource.get("name"), resource.get("devices")
        if replicated.get("renameByDefault") is not True and _valid_name(resource.get("rename")):
            out.append(_config_finding(node, WARNING, RENAME_IGNORED, (
                f"{at}.rename is not yet supported: the plugin drops it (it logs "
                f"'Ignoring...') and keeps advertising {name}")))
        if devices != "all" and (isinstance(devices, list) or plugin_schema.json_int(devices)):
            out.append(_config_finding(node, WARNING, DEVICES_IGNORED, (
                f"{at}.devices is {devices!r}: not yet supported, the plugin resets it to "
                "'all' (it logs 'Ignoring...') and shares every GPU of the node")))
        if not mps or not _valid_name(name):
            continue
        if name != dp.GPU_RESOURCE:
            out.append(_config_finding(node, WARNING, RESOURCE_NOT_GPU, (
                f"{at}.name is {name!r}: MPS shares only full GPUs ({dp.GPU_RESOURCE}; MIG "
                "devices cannot be shared with MPS), the plugin advertises nothing under this "
                "name and skips the entry without a word")))
        replicas = plugin_schema.json_int(resource.get("replicas"))
        if replicas is not None and replicas > MAX_MPS_CLIENTS:
            out.append(_config_finding(node, ERROR, REPLICAS_ABOVE_LIMIT, (
                f"{at}.replicas is {replicas}: the plugin accepts it, but an MPS server serves "
                f"at most {MAX_MPS_CLIENTS} clients per GPU, so pods bound past the "
                f"{MAX_MPS_CLIENTS}th replica of a GPU cannot start CUDA")))
    for name in sorted({n for n in names if names.count(n) > 1}):
        out.append(_config_finding(node, WARNING, DUPLICATE_RESOURCE, (
            f"{where}.resources lists {name} more than once: the entries replicate the same "
            "GPUs into the same replica IDs and overwrite each other; keep one")))
    return out


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and plugin_schema.normalize_resource_name(name)[1] is None


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
