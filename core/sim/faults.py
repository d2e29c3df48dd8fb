"""Faults the twin can be told to suffer, and what they do while active.

Why: rollouts, gates, alerts and the console must be exercised against the
failures they exist for: a GPU falling off the bus, a node going NotReady, a
device plugin that crashes and does not come back, a device-plugin restart (a
config change) that does not come back, error-rate or latency spikes on a
node, and the metrics source going down.

``FaultBook`` is pure: time is passed in. Invariants: a fault's effect holds
exactly from its injection until it is cleared or its duration ends; effects
of several faults combine (error rates as independent failures, latency
factors multiply); clearing a fault never un-fails a pod (a real pod killed by
a GPU failure has to be recreated too).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from core.errors import ValidationError


class FaultKind(StrEnum):
    GPU_FAILURE = "gpu_failure"
    NODE_NOT_READY = "node_not_ready"
    DEVICE_PLUGIN_FAILURE = "device_plugin_failure"
    PLUGIN_RESTART_FAILURE = "plugin_restart_failure"
    ERROR_SPIKE = "error_spike"
    LATENCY_SPIKE = "latency_spike"
    METRICS_DOWN = "metrics_down"
    TRAFFIC_SURGE = "traffic_surge"


_NEEDS_NODE = frozenset(FaultKind) - {FaultKind.METRICS_DOWN, FaultKind.TRAFFIC_SURGE}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject; build it with the functions below."""

    kind: FaultKind
    node: str | None = None
    gpu_index: int = 0
    error_rate: float = 0.0
    latency_factor: float = 1.0
    duration_s: float | None = None  # None: until cleared
    model: str | None = None  # traffic_surge: whose traffic
    traffic_factor: float = 1.0  # traffic_surge: requests arrive this many times as often

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            raise ValidationError("fault.kind", f"must be one of {', '.join(FaultKind)}")
        if self.kind in _NEEDS_NODE and not self.node:
            raise ValidationError("fault.node", f"{self.kind.value} needs a node")
        if self.gpu_index < 0:
            raise ValidationError("fault.gpu_index", "must be ≥ 0")
        if not (0.0 <= self.error_rate <= 1.0):
            raise ValidationError("fault.error_rate", "must be within [0, 1]")
        if not math.isfinite(self.latency_factor) or self.latency_factor < 1.0:
            raise ValidationError("fault.latency_factor", "must be a finite number ≥ 1")
        if self.kind is FaultKind.TRAFFIC_SURGE and not self.model:
            raise ValidationError("fault.model", "traffic_surge needs a model")
        if not math.isfinite(self.traffic_factor) or not (1.0 <= self.traffic_factor <= 100.0):
            raise ValidationError("fault.traffic_factor", "must be within [1, 100]")
        if self.duration_s is not None and (not math.isfinite(self.duration_s)
                                            or self.duration_s <= 0):
            raise ValidationError("fault.duration_s", "must be a number > 0 (or None)")


def gpu_failure(node: str, gpu_index: int = 0, *, duration_s: float | None = None) -> Fault:
    """The GPU drops out (an Xid 79 "fallen off the bus"): its pods fail, it draws nothing."""
    return Fault(FaultKind.GPU_FAILURE, node=node, gpu_index=gpu_index, duration_s=duration_s)


def node_not_ready(node: str, *, duration_s: float | None = None) -> Fault:
    """The kubelet stops reporting: pods there are Unknown and get no traffic."""
    return Fault(FaultKind.NODE_NOT_READY, node=node, duration_s=duration_s)


def device_plugin_restart_fails(node: str, *, duration_s: float | None = None) -> Fault:
    """The MPS daemon and device plugin restart and do not come back.

    Pods using the node's GPUs lose them (Failed); the node advertises no
    healthy GPU, so new pods there stay Pending until the fault clears.
    """
    return Fault(FaultKind.DEVICE_PLUGIN_FAILURE, node=node, duration_s=duration_s)


def plugin_restart_failure(node: str, *, duration_s: float | None = None) -> Fault:
    """Restarting the node's device plugin (``restart_device_plugin``) does not bring it back.

    Nothing happens until a restart: a plugin that comes up while this fault is
    active stays down (its GPUs unusable, the node advertises none) until the
    fault clears or expires, when its DaemonSet's next retry succeeds. Unlike
    ``device_plugin_restart_fails``, which is the plugin crashing by itself now.
    """
    return Fault(FaultKind.PLUGIN_RESTART_FAILURE, node=node, duration_s=duration_s)


def error_spike(node: str, *, rate: float = 0.25, duration_s: float | None = None) -> Fault:
    """A fraction ``rate`` of requests served on ``node`` fail."""
    return Fault(FaultKind.ERROR_SPIKE, node=node, error_rate=rate, duration_s=duration_s)


def latency_spike(node: str, *, factor: float = 4.0, duration_s: float | None = None) -> Fault:
    """Every iteration on ``node`` takes ``factor`` times as long (throttling, noisy host)."""
    return Fault(FaultKind.LATENCY_SPIKE, node=node, latency_factor=factor,
                 duration_s=duration_s)


def traffic_surge(model: str, *, factor: float = 4.0,
                  duration_s: float | None = None) -> Fault:
    """A model's requests arrive ``factor`` times as often (a launch, a retry storm)."""
    return Fault(FaultKind.TRAFFIC_SURGE, model=model, traffic_factor=factor,
                 duration_s=duration_s)


def metrics_down(*, duration_s: float | None = None) -> Fault:
    """The metrics source stops answering; the fleet itself carries on."""
    return Fault(FaultKind.METRICS_DOWN, duration_s=duration_s)


@dataclass(frozen=True, slots=True)
class ActiveFault:
    id: str
    fault: Fault
    since: float
    until: float | None


@dataclass(frozen=True, slots=True)
class FaultEffects:
    """The combined effect of the faults active at one instant."""

    failed_gpus: frozenset[tuple[str, int]] = frozenset()
    not_ready_nodes: frozenset[str] = frozenset()
    plugin_down_nodes: frozenset[str] = frozenset()
    error_rate: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    latency_factor: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    metrics_down: bool = False
    traffic_factor: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # node → since when a plugin_restart_failure is active there (the earliest, if several)
    restart_failing: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def gpu_usable(self, node: str, gpu_index: int) -> bool:
        """The GPU can run pods: present, and the node's device plugin is up."""
        return (node, gpu_index) not in self.failed_gpus and node not in self.plugin_down_nodes


class FaultBook:
    """The faults injected so far, with their lifetimes."""

    def __init__(self) -> None:
        self._active: dict[str, ActiveFault] = {}
        self._ids = itertools.count(1)

    def inject(self, fault: Fault, *, now: float) -> ActiveFault:
        until = None if fault.duration_s is None else now + fault.duration_s
        active = ActiveFault(id=f"fault-{next(self._ids)}", fault=fault, since=now, until=until)
        self._active[active.id] = active
        return active

    def clear(self, fault_id: str) -> bool:
        return self._active.pop(fault_id, None) is not None

    def clear_all(self) -> int:
        count = len(self._active)
        self._active.clear()
        return count

    def active(self, now: float) -> tuple[ActiveFault, ...]:
        return tuple(a for a in self._active.values() if a.until is None or now < a.until)

    def next_change(self, after: float) -> float | None:
        """The earliest expiry strictly after ``after``, or None."""
        ends = [a.until for a in self._active.values() if a.until is not None and a.until > after]
        return min(ends) if ends else None

    def effects(self, now: float) -> FaultEffects:
        failed: set[tuple[str, int]] = set()
        not_ready: set[str] = set()
        plugin: set[str] = set()
        ok_rate: dict[str, float] = {}
        factor: dict[str, float] = {}
        surge: dict[str, float] = {}
        restart: dict[str, float] = {}
        down = False
        for a in self.active(now):
            f = a.fault
            node = f.node or ""
            if f.kind is FaultKind.GPU_FAILURE:
                failed.add((node, f.gpu_index))
            elif f.kind is FaultKind.NODE_NOT_READY:
                not_ready.add(node)
            elif f.kind is FaultKind.DEVICE_PLUGIN_FAILURE:
                plugin.add(node)
            elif f.kind is FaultKind.PLUGIN_RESTART_FAILURE:
                restart[node] = min(a.since, restart.get(node, a.since))
            elif f.kind is FaultKind.ERROR_SPIKE:
                ok_rate[node] = ok_rate.get(node, 1.0) * (1.0 - f.error_rate)
            elif f.kind is FaultKind.LATENCY_SPIKE:
                factor[node] = factor.get(node, 1.0) * f.latency_factor
            elif f.kind is FaultKind.TRAFFIC_SURGE:
                model = f.model or ""
                surge[model] = surge.get(model, 1.0) * f.traffic_factor
            else:
                down = True
        return FaultEffects(
            failed_gpus=frozenset(failed), not_ready_nodes=frozenset(not_ready),
            plugin_down_nodes=frozenset(plugin),
            error_rate=MappingProxyType({n: 1.0 - ok for n, ok in ok_rate.items()}),
            latency_factor=MappingProxyType(factor), metrics_down=down,
            traffic_factor=MappingProxyType(surge),
            restart_failing=MappingProxyType(restart),
        )
