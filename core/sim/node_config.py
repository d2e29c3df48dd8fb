"""The twin's nodes as a node configurator sees them: cordon, device-plugin config, restarts.

Why: changing a node's MPS configuration (SPEC §4.1) must run in embedded
mode and in unit tests exactly as on a cluster, so the twin keeps per node
what Kubernetes and NVIDIA's device plugin keep: whether the node is
schedulable, which named config the plugin was told to use (the node label),
which one it runs and how many ``nvidia.com/gpu`` replicas per GPU that
advertises, and whether the plugin is up.

Invariants:
- a node always runs a valid config (``exclusive`` → 1 replica per GPU,
  ``mps-<N>`` → N); selecting another changes nothing until a restart;
- a restart switches to the selected config at once and keeps the node's GPUs
  unavailable (advertising nothing) for the restart time; a plugin that comes
  up while a ``plugin_restart_failure`` fault is active on the node stays down
  until the fault ends;
- cordon only stops new pods from starting: what runs keeps running.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import ValidationError
from core.model import Node
from core.mps.device_plugin import config_name
from core.mps.layout import MAX_MPS_CLIENTS
from core.settings import SimSettings, device_plugin_replicas
from core.sim.faults import FaultEffects

# The simulated device-plugin DaemonSet's pods are named after this prefix and the node.
PLUGIN_POD_PREFIX = "nvidia-device-plugin"


@dataclass(frozen=True, slots=True)
class DevicePluginStatus:
    """A node's device plugin as the twin sees it (for the console and tests).

    ``state`` is ``running``, ``restarting`` or ``down``; ``reason`` says why it
    is not running.
    """

    node: str
    config: str  # the config the plugin runs
    selected: str  # the config it was told to use (applies at the next restart)
    replicas: int  # nvidia.com/gpu per GPU under ``config``
    state: str
    reason: str = ""
    restarts: int = 0


@dataclass(slots=True)
class _Plugin:
    running: str
    replicas: int
    selected: str
    up_at: float = -math.inf  # the last restart brings the plugin up at this time
    restarts: int = 0


class NodeStates:
    """Schedulability and the device plugin of every node of the twin."""

    def __init__(self, fleet: Sequence[Node], *, sim: SimSettings) -> None:
        self.schedulable: dict[str, bool] = {n.name: n.schedulable for n in fleet}
        self._plugins: dict[str, _Plugin] = {}
        self._restarted: set[str] = set()
        for node in fleet:
            config, where = _initial_config(node, sim)
            replicas = device_plugin_replicas(config, where=where)
            for gpu in node.gpus:
                if len(gpu.slices) > replicas:
                    raise ValidationError(
                        "fleet", f"{node.name}/gpu{gpu.index} holds {len(gpu.slices)} servers "
                                 f"but its device-plugin config {config} advertises {replicas} "
                                 "nvidia.com/gpu per GPU")
            self._plugins[node.name] = _Plugin(running=config, replicas=replicas, selected=config)

    def check(self, node: str, *, where: str = "node") -> None:
        if node not in self.schedulable:
            raise ValidationError(where, f"{node!r} is not a node of this fleet")

    # --- cordon -------------------------------------------------------------------------
    def set_schedulable(self, node: str, schedulable: bool) -> None:
        self.check(node)
        self.schedulable[node] = bool(schedulable)

    def accepts_pods(self, node: str, *, now: float, eff: FaultEffects) -> bool:
        """The node takes new pods now: ready, not cordoned, its device plugin up."""
        return node not in eff.not_ready_nodes and self.schedulable[node] \
            and not self.plugin_down_reason(node, now=now, eff=eff)

    # --- device plugin ------------------------------------------------------------------
    def replicas(self, node: str) -> int:
        return self._plugins[node].replicas

    def running_config(self, node: str) -> str:
        return self._plugins[node].running

    def selected_config(self, node: str) -> str:
        self.check(node)
        return self._plugins[node].selected

    def select(self, node: str, config: str) -> None:
        """Record ``config`` as the one the node's plugin is to use (``ValidationError``
        naming ``config`` for a name that is not ``exclusive`` or ``mps-<N>``)."""
        self.check(node)
        device_plugin_replicas(config, where="config")
        self._plugins[node].selected = config

    def begin_restart(self, node: str, *, now: float, duration_s: float) -> DevicePluginStatus:
        """The plugin and the MPS daemon restart now with the selected config; they are up
        again after ``duration_s`` (unless a fault keeps them down)."""
        self.check(node)
        plugin = self._plugins[node]
        plugin.running = plugin.selected
        plugin.replicas = device_plugin_replicas(plugin.selected, where="config")
        plugin.up_at = now + duration_s
        plugin.restarts += 1
        self._restarted.add(node)
        return self._status(node, reason="", state="restarting")

    def plugin_pod(self, node: str) -> str:
        """The name of the node's (simulated) device-plugin pod since its last restart."""
        return f"{PLUGIN_POD_PREFIX}-{node}-{self._plugins[node].restarts}"

    def plugin_down_reason(self, node: str, *, now: float, eff: FaultEffects) -> str:
        """Why the node's device plugin advertises nothing now ("" when it is up)."""
        plugin = self._plugins[node]
        if now < plugin.up_at:
            return (f"device plugin restarting with config {plugin.running} "
                    f"(up in {plugin.up_at - now:g} s)")
        if node in eff.plugin_down_nodes:
            return "device plugin crashed and has not come back (device_plugin_failure)"
        since = eff.restart_failing.get(node)
        if plugin.restarts and since is not None and since <= plugin.up_at:
            return (f"device plugin did not come back after its restart with config "
                    f"{plugin.running} (plugin_restart_failure); its DaemonSet keeps retrying")
        return ""

    def plugins_down(self, *, now: float, eff: FaultEffects) -> frozenset[str]:
        """Nodes whose restarted device plugin advertises nothing now (restarting, or kept
        down by a fault); a plugin never restarted is down only by ``eff``'s crash faults."""
        if not self._restarted:
            return frozenset()
        return frozenset(n for n in self._restarted
                         if self.plugin_down_reason(n, now=now, eff=eff))

    def next_change(self, after: float) -> float | None:
        """The earliest time after ``after`` at which a restarting plugin comes up."""
        ups = [p.up_at for p in self._plugins.values() if p.up_at > after]
        return min(ups) if ups else None

    def status(self, node: str, *, now: float, eff: FaultEffects) -> DevicePluginStatus:
        self.check(node)
        reason = self.plugin_down_reason(node, now=now, eff=eff)
        state = "running" if not reason else \
            "restarting" if now < self._plugins[node].up_at else "down"
        return self._status(node, reason=reason, state=state)

    def _status(self, node: str, *, reason: str, state: str) -> DevicePluginStatus:
        plugin = self._plugins[node]
        return DevicePluginStatus(node=node, config=plugin.running, selected=plugin.selected,
                                  replicas=plugin.replicas, state=state, reason=reason,
                                  restarts=plugin.restarts)


def _initial_config(node: Node, sim: SimSettings) -> tuple[str, str]:
    """The config ``node`` runs at start and the field that named it."""
    if node.device_plugin_config:
        return node.device_plugin_config, f"fleet.{node.name}.device_plugin_config"
    if node.gpu_replicas is not None and 1 <= node.gpu_replicas <= MAX_MPS_CLIENTS:
        return config_name(node.gpu_replicas), f"fleet.{node.name}.gpu_replicas"
    override = sim.device_plugin_configs.get(node.name)
    if override is not None:
        return override, f"sim.device_plugin_configs.{node.name}"
    return sim.default_device_plugin_config, "sim.default_device_plugin_config"
