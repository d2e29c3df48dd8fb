"""The digital twin of the GPU fleet: implements the ``Cluster``, ``NodeConfigurator`` and
``Metrics`` ports.

Why: the console must show a living fleet without a cluster, the controller's
tests need a faithful fake, and policies are evaluated on replayed traffic.
One simulator serves all three.

How it is built: ``Twin`` is the facade that holds the lock, the clock and the
faults, and composes its parts: the static GPU table (``core.sim.tables``),
the nodes' cordon and device-plugin state (``core.sim.node_config``), the pods
and their scheduling (``core.sim.pods``), the traffic engine with its books
(``core.sim.engine``, ``core.sim.books``) and the telemetry built from them
(``core.sim.telemetry``).

How it runs: time comes from the injected ``Clock``. Every port call first
catches the simulation up to ``clock.now()`` (``step(dt)`` sleeps on the clock
and catches up); calls that wait (``drain``, ``restart_device_plugin``) sleep
on the same clock, never holding the lock while they do, so on a
``ManualClock`` they return at once with the simulated time advanced.

Invariants kept:
- counters (requests, successes, tokens, histogram counts, energy) never
  decrease; every arriving request is counted exactly once, in the tick it
  arrives (success or failure is decided there);
- a scheduled pod's slice never over-commits its GPU: a pod that would (no
  device-plugin replica left, SM threads, memory, MPS clients) is Failed with
  the reason, never squeezed in;
- a pod is Pending until it is scheduled and ``startup_delay_s`` has passed,
  then Running until it fails, is deleted or evicted; only Running pods that
  are not terminating serve traffic;
- a cordoned node, a node whose device plugin is restarting or down, and a
  NotReady node start no pod; pods bound to them wait Pending;
- a device-plugin restart fails every pod still holding a GPU of the node
  (its requests fail from then on, as its endpoints go), and the node
  advertises GPUs × replicas of the new config once the plugin is up;
- power stays within [idle, TDP] for a working GPU (0 for a failed one);
- the same seed, clock steps and calls give the same results.

Simplifications, on purpose: requests are counted when they arrive, not
when they finish; requests already queued on a replica that fails (a GPU
failure, a device-plugin restart) keep the outcome decided at their arrival;
pods on a NotReady node are never evicted; there is no ReplicaSet: a replica
that is evicted or fails is replaced only by a new bind.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from core.catalog import Catalog
from core.classify import ClassRules
from core.errors import TransientError, ValidationError
from core.manifest import dns_name
from core.model import Gpu, MpsSlice, Node
from core.ports import (
    Clock,
    DrainResult,
    PluginRestart,
    PodNotFoundError,
    ReplicaPod,
)
from core.settings import Settings
from core.sim import faults as fault_kinds
from core.sim.config import TwinConfig
from core.sim.engine import TrafficEngine
from core.sim.faults import ActiveFault, Fault, FaultBook, FaultKind
from core.sim.fleet import fleet_from_settings, generate_fleet
from core.sim.node_config import DevicePluginStatus, NodeStates
from core.sim.perf_model import PerfModel
from core.sim.pods import PodBook, PodRecord, PodStatus
from core.sim.tables import GpuTable
from core.sim.telemetry import fleet_telemetry
from core.sim.traffic import DEFAULT_HOURLY_QPS, ArrivalSource, DiurnalTraffic
from core.telemetry import FleetTelemetry

__all__ = ["DevicePluginStatus", "PodStatus", "Twin", "TwinConfig", "fleet_from_settings",
           "generate_fleet"]


class Twin:
    """A simulated fleet with model servers, traffic and faults, driven by a clock."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        nodes: Iterable[Node] | None = None,
        traffic: ArrivalSource | None = None,
        perf: PerfModel | None = None,
        config: TwinConfig | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._settings = settings
        self._catalog: Catalog = settings.catalog
        self._classes: ClassRules = settings.classes
        self._sim = settings.sim
        self._clock = clock
        self.config = cfg = config or TwinConfig()
        self.perf = perf or PerfModel.for_catalog(self._catalog)
        self._faults = FaultBook()
        fleet = tuple(nodes) if nodes is not None else fleet_from_settings(settings)
        if not fleet:
            raise ValidationError("fleet", "needs at least one node")
        self._gpus = gpus = GpuTable.build(fleet, self._catalog)
        self.gpu_count = gpus.count
        self._nodes = NodeStates(fleet, sim=self._sim)
        self._engine = engine = TrafficEngine(
            config=cfg, perf=self.perf,
            traffic=traffic if traffic is not None else DiurnalTraffic(
                hourly_qps=self._sim.hourly_qps or DEFAULT_HOURLY_QPS,
                bursts_per_hour=self._sim.bursts_per_hour, seed=cfg.seed),
            gpus=gpus, origin=clock.now() - cfg.warmup_s)
        self._pods = PodBook(gpus=gpus, nodes=self._nodes, classes=self._classes,
                             start=engine.start_pod, retire=engine.retire)

        # --- pods already running ---------------------------------------------------------
        before = engine.origin - max(cfg.startup_delay_s, 1.0)
        for node in fleet:
            for gpu in node.gpus:
                for sl in gpu.slices:
                    wc = sl.workload_class or \
                        self._classes.classify(sl.memory_mib / 1024).workload_class
                    pod = PodRecord(namespace=cfg.namespace, name=dns_name(sl.owner),
                                    node=node.name, gpu_index=gpu.index, owner=sl.owner,
                                    model=sl.model or sl.owner, workload_class=wc,
                                    thread_pct=sl.thread_pct, memory_mib=sl.memory_mib,
                                    created_at=before)
                    if pod.key in self._pods.pods:
                        raise ValidationError("fleet", f"two slices are named {sl.owner!r}")
                    self._pods.admit_running(pod, at=before)
        engine.init_weights(self._pods.held_by_row())
        for node in fleet:
            for gpu in node.gpus:
                if not gpu.healthy:
                    self._faults.inject(fault_kinds.gpu_failure(node.name, gpu.index),
                                        now=before)
        for node in fleet:
            if not node.ready:
                self._faults.inject(fault_kinds.node_not_ready(node.name), now=before)
        if cfg.warmup_s > 0:
            self.sync()

    # ======================================================================================
    # Cluster port
    # ======================================================================================
    def nodes(self) -> tuple[Node, ...]:
        with self._lock:
            self.sync()
            now = self._clock.now()
            eff = self._faults.effects(now)
            gpus, engine, states = self._gpus, self._engine, self._nodes
            held = self._pods.held_by_row()
            failed = gpus.failed_rows(eff)
            down = states.plugins_down(now=now, eff=eff)
            by_node: dict[str, list[Gpu]] = {name: [] for name in gpus.node_names}
            # Whole columns at once (a 5,000-GPU fleet: per-element numpy calls dominate).
            util = np.round(np.clip(engine.util, 0.0, 1.0), 4).tolist()
            power = np.round(engine.power, 1).tolist()
            mem_total = np.asarray(gpus.mem_total).astype(int).tolist()
            other_mem = np.asarray(gpus.other_mem).astype(int).tolist()
            dead_rows = np.asarray(failed, dtype=bool).tolist()
            for row in range(gpus.count):
                node, index = gpus.node[row], gpus.index[row]
                usable = eff.gpu_usable(node, index) and node not in down
                dead = dead_rows[row]
                slices = tuple(
                    MpsSlice(owner=p.owner, thread_pct=p.thread_pct, memory_mib=p.memory_mib,
                             model=p.model, workload_class=p.workload_class)
                    for p in held.get(row, ()))
                by_node[node].append(Gpu(
                    index=index, gpu_type=gpus.gpu_type[row],
                    memory_total_mib=mem_total[row],
                    utilization=0.0 if dead else util[row],
                    power_w=0.0 if dead else power[row],
                    slices=slices, healthy=usable, uuid=gpus.uuid[row],
                    other_memory_mib=other_mem[row]))
            return tuple(
                Node(name=name, gpus=tuple(by_node[name]),
                     schedulable=states.schedulable[name],
                     ready=name not in eff.not_ready_nodes, labels=gpus.node_labels[name],
                     device_plugin_config=states.running_config(name),
                     gpu_replicas=states.replicas(name))
                for name in gpus.node_names)

    def bind(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self.sync()
            now = self._clock.now()
            self._pods.add(self._pods.parse(pod, now=now))
            self._schedule_pending(now)

    def pod_phase(self, namespace: str, name: str) -> str:
        with self._lock:
            self.sync()
            pod = self._pods.pods.get((namespace, name))
            if pod is None:
                raise PodNotFoundError(f"pod {namespace}/{name} not found")
            now = self._clock.now()
            return self._pods.phase(pod, now=now, eff=self._faults.effects(now)).value

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self.sync()
            self._pods.remove(namespace, name)
            self._schedule_pending(self._clock.now())

    def set_schedulable(self, node: str, schedulable: bool) -> None:
        with self._lock:
            self.sync()
            self._nodes.set_schedulable(node, schedulable)
            self._schedule_pending(self._clock.now())

    def replica_pods(self) -> tuple[ReplicaPod, ...]:
        return tuple(ReplicaPod(namespace=p.namespace, name=p.name, node=p.node,
                                gpu_index=p.gpu_index, model=p.model, owner=p.owner,
                                thread_pct=p.thread_pct, memory_mib=p.memory_mib, phase=p.phase)
                     for p in self.pods())

    # ======================================================================================
    # Node configurator port
    # ======================================================================================
    def cordon(self, node: str) -> None:
        """No new pod starts on ``node``; what runs there keeps running."""
        self.set_schedulable(node, False)

    def uncordon(self, node: str) -> None:
        self.set_schedulable(node, True)

    def drain(self, node: str, *, timeout_s: float) -> DrainResult:
        """Evict every pod running on ``node`` as the Eviction API does, then wait until the
        evicted pods are gone; bounded by ``timeout_s`` of the twin's clock.

        Finished (Failed) pods stay, as with ``kubectl drain``; pods bound to the node
        but not started there are not on it. An eviction the disruption budget refuses
        is retried every ``sim.eviction_retry_s`` until the timeout; then the result
        says which pods are blocked and why. Cordon the node first, or pods bound to it
        meanwhile start there.
        """
        _positive("timeout_s", timeout_s)
        with self._lock:
            self.sync()
            self._nodes.check(node)
            deadline = self._clock.now() + timeout_s
            skipped: list[tuple[str, str]] = []
            targets: list[tuple[str, str]] = []
            for p in self._pods.pods.values():
                if p.node != node or p.scheduled_at is None:
                    continue
                if p.failed_at is not None:
                    skipped.append((_key(p), "finished (Failed)"))
                else:
                    targets.append(p.key)
        drain = _Drain(node=node, skipped=tuple(skipped))
        while True:
            with self._lock:
                self.sync()
                self._evict_round(drain, targets)
                if targets and self._clock.now() + self._sim.eviction_retry_s > deadline:
                    blocked = tuple((f"{ns}/{name}", drain.refusals.get(f"{ns}/{name}", ""))
                                    for ns, name in targets)
                    listed = "; ".join(f"{k}: {why}" for k, why in blocked)
                    return drain.result(
                        blocked=blocked, reason=f"gave up after {timeout_s:g} s: "
                                                f"{len(blocked)} pod(s) not evicted ({listed})")
            if not targets:
                break
            self._clock.sleep(self._sim.eviction_retry_s)
        while True:
            with self._lock:
                self.sync()
                now = self._clock.now()
                left = [p for k in drain.leaving if (p := self._pods.pods.get(k)) is not None]
                if not left:
                    return drain.result(completed=True)
                gone = max(p.gone_at or now for p in left)
                if gone > deadline:
                    return drain.result(
                        reason=f"gave up after {timeout_s:g} s: evicted pod(s) still "
                               f"terminating: {', '.join(_key(p) for p in left)}")
            self._clock.sleep(max(gone - now, 0.0))

    def _evict_round(self, drain: _Drain, targets: list[tuple[str, str]]) -> None:
        """Ask once to evict each pod in ``targets``; the evicted ones leave the list."""
        now = self._clock.now()
        eff = self._faults.effects(now)
        budget = self._sim.max_unavailable_per_deployment
        for key in list(targets):
            pod = self._pods.pods.get(key)
            if pod is None or pod.failed_at is not None:
                targets.remove(key)  # gone or finished meanwhile: nothing to evict
                continue
            # Evicting a pod that is already terminating succeeds without a budget check.
            why = "" if pod.deleting_at is not None else \
                self._pods.eviction_refusal(pod, now=now, eff=eff, max_unavailable=budget)
            if why:
                drain.refusals[_key(pod)] = why
                continue
            self._pods.evict(pod, now=now, grace_s=self._sim.termination_grace_s,
                             reason=f"Evicted: drain of node {drain.node}")
            drain.evicted[_key(pod)] = pod.owner
            drain.leaving.append(key)
            targets.remove(key)
        self._schedule_pending(now)

    def device_plugin_config(self, node: str) -> str:
        """The config ``node``'s device plugin was told to use (it runs it after a restart)."""
        with self._lock:
            return self._nodes.selected_config(node)

    def set_device_plugin_config(self, node: str, config: str) -> None:
        """Select ``config`` (``exclusive`` or ``mps-<N>``) for ``node``; nothing on its GPUs
        changes until ``restart_device_plugin``. ``ValidationError`` naming ``node`` or
        ``config`` for an unknown node or name, with nothing changed."""
        with self._lock:
            self._nodes.select(node, config)

    def restart_device_plugin(self, node: str, *, expected_gpus: int,
                              timeout_s: float) -> PluginRestart:
        """Restart ``node``'s device plugin and MPS daemon with the selected config, wait until
        it is up and the node advertises ``expected_gpus`` ``nvidia.com/gpu``.

        Every pod still holding a GPU of the node loses it now (Failed, its requests
        fail); the GPUs are unavailable for ``sim.device_plugin_restart_s``. A
        ``plugin_restart_failure`` fault keeps the plugin down: the result is not ready,
        with the reason.
        """
        _positive("timeout_s", timeout_s)
        if isinstance(expected_gpus, bool) or not isinstance(expected_gpus, int) \
                or expected_gpus < 0:
            raise ValidationError("expected_gpus", "must be a whole number ≥ 0")
        restart_s = self._sim.device_plugin_restart_s
        with self._lock:
            self.sync()
            self._nodes.check(node)
            now = self._clock.now()
            deadline = now + timeout_s
            status = self._nodes.begin_restart(node, now=now, duration_s=restart_s)
            self._pods.fail(lambda p: p.node == node, now=now,
                            reason=f"Error: lost its GPU: the MPS control daemon and device "
                                   f"plugin of {node} restarted (config {status.config})")
            names = (self._nodes.plugin_pod(node),)
        self._clock.sleep(min(restart_s, timeout_s))
        with self._lock:
            self.sync()
            now = self._clock.now()
            down = self._nodes.plugin_down_reason(node, now=now, eff=self._faults.effects(now))
            if down:
                return PluginRestart(node=node, ready=False, pods=names, allocatable_gpus=0,
                                     reason=f"device plugin on {node} not ready after "
                                            f"{timeout_s:g} s: {down}")
            count = self._allocatable(node, now=now)
        if count != expected_gpus and deadline > now:
            self._clock.sleep(deadline - now)  # the adapter watches until its deadline
            with self._lock:
                self.sync()
                count = self._allocatable(node, now=self._clock.now())
        return PluginRestart.advertised(node=node, pods=names, count=count,
                                         expected=expected_gpus, timeout_s=timeout_s)

    def device_plugin_status(self, node: str) -> DevicePluginStatus:
        """What ``node``'s device plugin runs and whether it is up (with the reason if not)."""
        with self._lock:
            self.sync()
            now = self._clock.now()
            return self._nodes.status(node, now=now, eff=self._faults.effects(now))

    def _allocatable(self, node: str, *, now: float) -> int:
        """``nvidia.com/gpu`` the node advertises: usable GPUs × replicas of its config."""
        eff = self._faults.effects(now)
        if self._nodes.plugin_down_reason(node, now=now, eff=eff):
            return 0
        usable = sum(1 for row in self._gpus.rows_of_node[node]
                     if eff.gpu_usable(node, self._gpus.index[row]))
        return usable * self._nodes.replicas(node)

    # ======================================================================================
    # Metrics port
    # ======================================================================================
    def available(self) -> bool:
        with self._lock:
            return not self._faults.effects(self._clock.now()).metrics_down

    def telemetry(self) -> FleetTelemetry:
        with self._lock:
            self.sync()
            now = self._clock.now()
            eff = self._faults.effects(now)
            if eff.metrics_down:
                raise TransientError("metrics source unavailable (simulated outage)", delay=30.0)
            return fleet_telemetry(now=now, eff=eff, engine=self._engine, pods=self._pods,
                                   plugins_down=self._nodes.plugins_down(now=now, eff=eff))

    # ======================================================================================
    # Simulation control
    # ======================================================================================
    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def simulated_until(self) -> float:
        """Epoch time up to which the simulation has run (on the tick grid)."""
        return self._engine.simulated_until

    def step(self, dt: float) -> None:
        """Let ``dt`` seconds pass on the clock, then catch the simulation up.

        On a ``ManualClock`` this returns at once; on the system clock it waits.
        """
        if not math.isfinite(dt) or dt < 0:
            raise ValidationError("dt", "must be a finite number ≥ 0")
        self._clock.sleep(dt)
        self.sync()

    def sync(self) -> None:
        """Simulate every whole tick up to the clock's now."""
        with self._lock:
            engine = self._engine
            now = self._clock.now()
            target = engine.target_ticks(now)
            while engine.ticks < target:
                t0 = engine.simulated_until
                k_ticks = engine.chunk_length(target, events=self._events_after(t0))
                self._pods.reap(t0)
                eff = self._faults.effects(t0)
                self._pods.schedule_pending(t0, eff)
                engine.simulate(k_ticks, pods=self._pods.pods.values(), eff=eff)
            self._pods.reap(now)

    def inject(self, fault: Fault) -> str:
        """Start ``fault`` now; returns its id for ``clear_fault``."""
        with self._lock:
            self.sync()
            if fault.node is not None:
                self._nodes.check(fault.node, where="fault.node")
                if fault.kind is FaultKind.GPU_FAILURE and \
                        (fault.node, fault.gpu_index) not in self._gpus.row_of:
                    raise ValidationError("fault.gpu_index",
                                          f"{fault.node} has no GPU {fault.gpu_index}")
            now = self._clock.now()
            active = self._faults.inject(fault, now=now)
            if fault.kind is FaultKind.GPU_FAILURE:
                self._pods.fail(
                    lambda p: (p.node, p.gpu_index) == (fault.node, fault.gpu_index),
                    now=now, reason="GPU failure (Xid 79: fallen off the bus)")
            elif fault.kind is FaultKind.DEVICE_PLUGIN_FAILURE:
                self._pods.fail(lambda p: p.node == fault.node, now=now,
                                reason="lost its GPU: MPS daemon and device plugin restarted "
                                       "and did not come back")
            return active.id

    def clear_fault(self, fault_id: str) -> bool:
        with self._lock:
            self.sync()
            cleared = self._faults.clear(fault_id)
            self._schedule_pending(self._clock.now())
            return cleared

    def clear_faults(self) -> int:
        with self._lock:
            self.sync()
            count = self._faults.clear_all()
            self._schedule_pending(self._clock.now())
            return count

    def faults(self) -> tuple[ActiveFault, ...]:
        with self._lock:
            return self._faults.active(self._clock.now())

    def pods(self) -> tuple[PodStatus, ...]:
        with self._lock:
            self.sync()
            now = self._clock.now()
            return self._pods.statuses(now=now, eff=self._faults.effects(now))

    def set_traffic_weights(self, weights: Mapping[str, float]) -> None:
        """Set the relative traffic of the named models (in every namespace, and for
        deployments of them that appear later); other models keep theirs."""
        with self._lock:
            self.sync()
            self._engine.books.set_weights(weights)

    def traffic_weights(self) -> dict[tuple[str, str], float]:
        """Each deployment's share of the traffic (shares sum to 1)."""
        with self._lock:
            return self._engine.books.shares()

    def slo_met(self) -> dict[tuple[str, str], int]:
        """Per (namespace, model): requests so far that met every latency objective
        ``TwinConfig.slo_targets`` states for the model (the evaluation's measure; no
        exporter has such a counter)."""
        with self._lock:
            self.sync()
            books = self._engine.books
            return {k: int(books.c_slo_ok[i]) for i, k in enumerate(books.keys)}

    # --------------------------------------------------------------------------------------
    def _schedule_pending(self, now: float) -> None:
        self._pods.schedule_pending(now, self._faults.effects(now))

    def _events_after(self, t0: float) -> list[float]:
        events = self._pods.events_after(t0, endpoint_grace_s=self.config.endpoint_grace_s)
        for change in (self._faults.next_change(t0), self._nodes.next_change(t0)):
            if change is not None:
                events.append(change)
        return events


@dataclass(slots=True)
class _Drain:
    """What one ``drain`` call has done so far."""

    node: str
    skipped: tuple[tuple[str, str], ...]
    evicted: dict[str, str] = field(default_factory=dict)  # namespace/name → slice owner
    leaving: list[tuple[str, str]] = field(default_factory=list)  # the evicted pods' keys
    refusals: dict[str, str] = field(default_factory=dict)  # namespace/name → last refusal

    def result(self, *, completed: bool = False, blocked: tuple[tuple[str, str], ...] = (),
               reason: str = "") -> DrainResult:
        return DrainResult(node=self.node, completed=completed, evicted=tuple(self.evicted),
                           skipped=self.skipped, blocked=blocked, reason=reason,
                           owners=MappingProxyType(dict(self.evicted)))


def _key(pod: PodRecord) -> str:
    return f"{pod.namespace}/{pod.name}"


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ValidationError(name, "must be a number > 0")

