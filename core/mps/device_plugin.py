"""Compile MPS layouts into NVIDIA k8s-device-plugin configs (schema ``v1``).

The plugin cannot express a layout slice by slice. With
``sharing.mps.resources[{name: nvidia.com/gpu, replicas: N}]`` it starts one
MPS control daemon per node and gives *every* replica of *every* GPU on that
node the same ``100 // N`` % of SM threads and ``total // N`` MiB of pinned
memory. A layout is therefore compiled to one named config per distinct N
(``mps-<N>``, or ``exclusive`` when the node needs no sharing), selected per
node with the label ``nvidia.com/device-plugin.config``; the per-pod
environment (``core.mps.env``) narrows each client to its own slice.

Invariants kept here:
- a compiled config only holds fields the plugin's ``v1`` config accepts
  (``unknown_fields`` is empty), never ``rename``/``devices``, which the
  plugin drops at start-up, and ``renameByDefault: false``, so that the
  shared GPUs keep the name pods ask for;
- a config with a ``sharing`` section always has ``replicas ≥ 2``, because
  the plugin refuses to start with fewer (a GPU that is not shared gets no
  ``sharing`` section at all);
- names and rendered YAML are deterministic, so that a diff against what runs
  shows only real changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from core.errors import ValidationError
from core.model import Node
from core.mps import plugin_schema
from core.mps.layout import GpuLayout

CONFIG_VERSION = "v1"
NODE_LABEL = "nvidia.com/device-plugin.config"
GPU_RESOURCE = "nvidia.com/gpu"
EXCLUSIVE_CONFIG = "exclusive"
MPS_CONFIG_PREFIX = "mps-"

# Key paths of the plugin's config ``v1`` (written from its Go types, release and
# commits in core.mps.plugin_schema), with ``[]`` standing for "any list item". The
# plugin drops any other key without a word, so a key outside this set is a setting
# that silently does nothing.
ALLOWED_FIELDS: frozenset[str] = plugin_schema.key_paths()


def needs_sharing(layout: GpuLayout) -> bool:
    """False for a GPU the plugin can hand out whole: empty, or one 100 % client."""
    return not (layout.clients == 0
                or (layout.clients == 1 and layout.slices[0].thread_pct >= 100))


def gpu_replicas(layout: GpuLayout) -> int:
    """Replicas this GPU alone would need: 1 without sharing, else one per client.

    A single client below 100 % still gets 2 replicas: with 1 the plugin would
    not share the GPU, and the free share the layout keeps could never be bound.
    """
    if not needs_sharing(layout):
        return 1
    return max(2, layout.clients)


def node_replicas(layouts: Sequence[GpuLayout]) -> int:
    """Replicas for the whole node: the plugin's config is node-wide, so the
    GPU with the most clients decides (the lint reports the others)."""
    return max((gpu_replicas(layout) for layout in layouts), default=1)


def config_name(replicas: int) -> str:
    """Deterministic config name: ``exclusive`` or ``mps-<replicas>``."""
    return EXCLUSIVE_CONFIG if replicas < 2 else f"{MPS_CONFIG_PREFIX}{replicas}"


def thread_cap_pct(replicas: int) -> int:
    """SM thread percentage the plugin gives each replica (integer division)."""
    return 100 // max(1, replicas)


def memory_cap_mib(memory_total_mib: int, replicas: int) -> int:
    """Pinned memory the plugin gives each replica of a GPU, in MiB."""
    return memory_total_mib // max(1, replicas)


def plugin_config(replicas: int) -> dict[str, Any]:
    """The plugin config for ``replicas`` per GPU (no ``sharing`` below 2)."""
    config: dict[str, Any] = {"version": CONFIG_VERSION, "flags": {"migStrategy": "none"}}
    if replicas >= 2:
        config["sharing"] = {
            "mps": {
                # Keep the resource name nvidia.com/gpu: pods ask for exactly that.
                "renameByDefault": False,
                "failRequestsGreaterThanOne": True,
                "resources": [{"name": GPU_RESOURCE, "replicas": replicas}],
            }
        }
    return config


def compile_node(layouts: Sequence[GpuLayout]) -> tuple[str, dict[str, Any]]:
    """``(config name, config)`` for the GPUs of one node."""
    if not layouts:
        raise ValidationError("layouts", "a node needs at least one GPU layout")
    nodes = {layout.node for layout in layouts}
    if len(nodes) != 1:
        raise ValidationError("layouts", f"layouts of several nodes given: {sorted(nodes)}")
    replicas = node_replicas(layouts)
    return config_name(replicas), plugin_config(replicas)


def fleet_layouts(nodes: Iterable[Node]) -> dict[str, tuple[GpuLayout, ...]]:
    """The current layout of every GPU, grouped by node (the compilers' input)."""
    return {node.name: tuple(GpuLayout.from_gpu(node.name, gpu) for gpu in node.gpus)
            for node in nodes}


@dataclass(frozen=True, slots=True)
class DevicePluginPlan:
    """What to apply for a fleet: the named configs and which node uses which.

    ``configs``: config name → config dict; ``node_configs``: node → config
    name (the value of the node label ``nvidia.com/device-plugin.config``);
    ``config_map_data``: config name → YAML, the ``data`` of the ConfigMap the
    plugin's Helm chart reads (``config.name``).
    """

    configs: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({}))
    node_configs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    config_map_data: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def node_label(self, node: str) -> dict[str, str]:
        """The label to put on ``node`` so that the plugin picks its config."""
        return {NODE_LABEL: self.node_configs[node]}


def compile_fleet(layouts_by_node: Mapping[str, Sequence[GpuLayout]]) -> DevicePluginPlan:
    """Compile every node; each distinct config appears once, sorted by name."""
    configs: dict[str, dict[str, Any]] = {}
    node_configs: dict[str, str] = {}
    for node in sorted(layouts_by_node):
        layouts = layouts_by_node[node]
        if any(layout.node != node for layout in layouts):
            raise ValidationError(f"layouts.{node}", "holds a GPU of another node")
        name, config = compile_node(layouts)
        configs.setdefault(name, config)
        node_configs[node] = name
    ordered = {name: configs[name] for name in sorted(configs, key=_config_order)}
    return DevicePluginPlan(
        configs=MappingProxyType(ordered),
        node_configs=MappingProxyType(node_configs),
        config_map_data=MappingProxyType({n: render_yaml(c) for n, c in ordered.items()}),
    )


def _config_order(name: str) -> tuple[int, str]:
    # exclusive first, then mps-2, mps-3, … numerically rather than as text.
    if name.startswith(MPS_CONFIG_PREFIX) and name[len(MPS_CONFIG_PREFIX):].isdigit():
        return int(name[len(MPS_CONFIG_PREFIX):]), name
    return 0, name


def render_yaml(config: Mapping[str, Any]) -> str:
    """A config as block-style YAML, keys in the order they were built."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False)


def render_config_map(
    plan: DevicePluginPlan, *, name: str = "nvidia-device-plugin-configs",
    namespace: str = "nvidia-device-plugin",
) -> dict[str, Any]:
    """The core/v1 ConfigMap holding every named config of ``plan``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "gpu-scheduler-console"},
        },
        "data": dict(plan.config_map_data),
    }


def unknown_fields(config: Mapping[str, Any]) -> list[str]:
    """Key paths in ``config`` that the plugin's ``v1`` decoder drops as unknown.

    Paths are shown as written, with list indices, e.g.
    ``sharing.mps.resources[0].foo``. A key that differs from a field only in
    case is known where the plugin matches keys case-insensitively (plain Go
    structs: ``flags``, ``sharing``, ...) and unknown where its own decoder
    looks keys up exactly (``sharing.mps``, its resources, ``resources.gpus``);
    see ``core.mps.plugin_schema``.
    """
    return [issue.path for issue in plugin_schema.decode(config).issues
            if issue.kind is plugin_schema.IssueKind.DROPPED]


def _plain(value: Any) -> Any:
    # MappingProxyType and tuples are not safe_dump-able; turn them into dict/list.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
