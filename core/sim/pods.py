"""The twin's pods and their scheduling: bind, phases, slices, evictions.

Why: the twin must admit and run pods the way a node does, so that the
controller and the console see what a cluster would show: a pod is bound by
its node selector, waits while its node cannot take it, is admitted only into
a device-plugin replica and a GPU share that are free, starts after the
startup delay, and is Failed with the reason when admission or its GPU fails.

Invariants:
- a pod holds its GPU slice (and one ``nvidia.com/gpu`` replica) from being
  scheduled until it fails or is gone; a pod that would over-commit its GPU
  (replicas, SM threads, memory, MPS clients) is Failed with the reason, never
  squeezed in;
- a pod is Pending until it is scheduled and ``startup_delay_s`` has passed,
  then Running until it fails, is deleted, or its eviction's grace ends; a
  terminating pod still reads Running (as in Kubernetes) but no longer gets
  traffic;
- an evicted replica is owed back to its deployment until a pod of the same
  deployment is bound again (the disruption budget counts it as unavailable,
  as it counts a ReplicaSet's missing replica);
- the disruption budget is the Eviction API's: a Running replica may be
  evicted only while fewer than ``max_unavailable`` replicas of its deployment
  are unavailable; a pod that is not Running is never protected by it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.classify import ClassRules
from core.manifest import read_pod
from core.model import WorkloadClass
from core.mps.layout import MAX_MPS_CLIENTS
from core.ports import PodExistsError, PodPhase
from core.sim.faults import FaultEffects
from core.sim.node_config import NodeStates
from core.sim.tables import GpuTable

# What the kubelet's device manager says when a pod asks for a replica none is left of.
ADMISSION_REASON = "UnexpectedAdmissionError"


@dataclass(frozen=True, slots=True)
class PodStatus:
    """A pod as the twin sees it (for the console's fleet view and tests)."""

    namespace: str
    name: str
    node: str
    gpu_index: int
    model: str
    owner: str
    thread_pct: int
    memory_mib: int
    phase: str
    reason: str = ""


@dataclass(slots=True)
class PodRecord:
    """One pod and its life on the twin (mutable; only the twin's parts touch it)."""

    namespace: str
    name: str
    node: str
    gpu_index: int
    owner: str
    model: str
    workload_class: WorkloadClass
    thread_pct: int
    memory_mib: int
    created_at: float
    scheduled_at: float | None = None
    ready_at: float | None = None
    failed_at: float | None = None
    reason: str = ""
    replica: int = -1
    deployment: int = -1
    deleting_at: float | None = None  # evicted: terminating since
    gone_at: float | None = None  # evicted: removed at

    def holds_gpu(self) -> bool:
        return self.scheduled_at is not None and self.failed_at is None

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def deployment_key(self) -> tuple[str, str]:
        return self.namespace, self.model


class PodBook:
    """Every pod of the twin by (namespace, name), and the scheduling of pending ones.

    ``start(pod, at)`` is called when a pod is admitted onto its GPU (the
    engine gives it a replica row and a deployment); ``retire(pod)`` when it
    stops serving for good (deleted, evicted).
    """

    def __init__(self, *, gpus: GpuTable, nodes: NodeStates, classes: ClassRules,
                 start: Callable[[PodRecord, float], None],
                 retire: Callable[[PodRecord], None]) -> None:
        self._gpus = gpus
        self._nodes = nodes
        self._classes = classes
        self._start = start
        self._retire = retire
        self.pods: dict[tuple[str, str], PodRecord] = {}
        self.owed: dict[tuple[str, str], int] = {}  # evicted replicas not yet replaced

    # --- pods in and out ----------------------------------------------------------------
    def parse(self, pod: Mapping[str, Any], *, now: float) -> PodRecord:
        p = read_pod(pod)
        sl = p.mps_slice
        wc = sl.workload_class or self._classes.classify(sl.memory_mib / 1024).workload_class
        return PodRecord(namespace=p.namespace, name=p.name, node=p.node, gpu_index=p.gpu_index,
                         owner=sl.owner, model=sl.model or sl.owner, workload_class=wc,
                         thread_pct=sl.thread_pct, memory_mib=sl.memory_mib, created_at=now)

    def add(self, record: PodRecord) -> None:
        """A new pod object (``PodExistsError`` for a name in use, terminating or not)."""
        if record.key in self.pods:
            raise PodExistsError(f"pod {record.namespace}/{record.name} already exists")
        self.pods[record.key] = record
        owed = self.owed.get(record.deployment_key, 0)
        if owed > 1:
            self.owed[record.deployment_key] = owed - 1
        elif owed:
            del self.owed[record.deployment_key]

    def admit_running(self, record: PodRecord, *, at: float) -> None:
        """A pod that already runs when the twin starts (its slice is in the fleet)."""
        self.add(record)
        self._start(record, at)
        record.ready_at = at

    def remove(self, namespace: str, name: str) -> PodRecord | None:
        pod = self.pods.pop((namespace, name), None)
        if pod is not None and pod.replica >= 0:
            self._retire(pod)
        return pod

    def evict(self, pod: PodRecord, *, now: float, grace_s: float, reason: str) -> None:
        """The Eviction API took the pod: it leaves its endpoints now and is gone after the
        grace period; its replica is owed back to its deployment."""
        if pod.deleting_at is None:
            pod.deleting_at = now
            pod.gone_at = now + grace_s
            pod.reason = reason
            self.owed[pod.deployment_key] = self.owed.get(pod.deployment_key, 0) + 1
            if pod.replica >= 0:
                self._retire(pod)
        if pod.gone_at is not None and pod.gone_at <= now:
            self.pods.pop(pod.key, None)

    def eviction_refusal(self, pod: PodRecord, *, now: float, eff: FaultEffects,
                         max_unavailable: int) -> str:
        """Why the Eviction API refuses to evict ``pod`` now ("" when it may go).

        Expected replicas are the deployment's pods that are not terminating plus
        those evicted and not yet replaced; healthy ones are Running and not
        terminating. As in Kubernetes, a pod that is not Running can always go.
        """
        if not self.serving(pod, now=now, eff=eff):
            return ""
        key = pod.deployment_key
        mine = [p for p in self.pods.values() if p.deployment_key == key]
        expected = sum(1 for p in mine if p.deleting_at is None) + self.owed.get(key, 0)
        healthy = sum(1 for p in mine if self.serving(p, now=now, eff=eff))
        unavailable = expected - healthy
        if unavailable < max_unavailable:
            return ""
        return (f"Cannot evict pod as it would violate the pod's disruption budget: "
                f"{pod.namespace}/{pod.model} has {unavailable} of {expected} replica(s) "
                f"unavailable (max_unavailable_per_deployment = {max_unavailable})")

    def reap(self, now: float) -> int:
        """Remove the evicted pods whose grace has ended; returns how many."""
        gone = [k for k, p in self.pods.items() if p.gone_at is not None and p.gone_at <= now]
        for key in gone:
            del self.pods[key]
        return len(gone)

    def fail(self, which: Callable[[PodRecord], bool], *, now: float, reason: str
             ) -> list[PodRecord]:
        """Fail every pod holding a GPU that ``which`` selects; returns them."""
        failed = []
        for p in self.pods.values():
            if p.failed_at is None and p.scheduled_at is not None and which(p):
                p.failed_at, p.reason = now, reason
                failed.append(p)
        return failed

    # --- what pods are doing ------------------------------------------------------------
    def phase(self, pod: PodRecord, *, now: float, eff: FaultEffects) -> PodPhase:
        if pod.failed_at is not None:
            return PodPhase.FAILED
        if pod.scheduled_at is None or pod.ready_at is None:
            return PodPhase.PENDING
        if pod.node in eff.not_ready_nodes:
            return PodPhase.UNKNOWN
        return PodPhase.RUNNING if now >= pod.ready_at else PodPhase.PENDING

    def serving(self, pod: PodRecord, *, now: float, eff: FaultEffects) -> bool:
        """Running and not terminating: a replica its deployment's Service sends traffic to."""
        return pod.deleting_at is None and self.phase(pod, now=now, eff=eff) is PodPhase.RUNNING

    def held_by_row(self) -> dict[int, list[PodRecord]]:
        held: dict[int, list[PodRecord]] = {}
        row_of = self._gpus.row_of
        for p in self.pods.values():
            if p.holds_gpu():
                held.setdefault(row_of[(p.node, p.gpu_index)], []).append(p)
        return held

    def statuses(self, *, now: float, eff: FaultEffects) -> tuple[PodStatus, ...]:
        return tuple(
            PodStatus(namespace=p.namespace, name=p.name, node=p.node,
                      gpu_index=p.gpu_index, model=p.model, owner=p.owner,
                      thread_pct=p.thread_pct, memory_mib=p.memory_mib,
                      phase=self.phase(p, now=now, eff=eff).value, reason=p.reason)
            for p in self.pods.values())

    def events_after(self, t0: float, *, endpoint_grace_s: float) -> list[float]:
        """Times after ``t0`` at which a pod changes what it does (the engine's chunk ends)."""
        events: list[float] = []
        for p in self.pods.values():
            if p.ready_at is not None and p.failed_at is None and p.ready_at > t0:
                events.append(p.ready_at)
            if p.failed_at is not None and p.failed_at + endpoint_grace_s > t0:
                events.append(p.failed_at + endpoint_grace_s)
            if p.gone_at is not None and p.gone_at > t0:
                events.append(p.gone_at)
        return events

    # --- scheduling ---------------------------------------------------------------------
    def schedule_pending(self, now: float, eff: FaultEffects) -> None:
        """Start pods whose node can take them now (ready, schedulable, its device plugin up,
        GPU usable); fail those the node's admission refuses."""
        pending = [p for p in self.pods.values() if p.scheduled_at is None and p.failed_at is None]
        if not pending:
            return
        held = self.held_by_row()
        for pod in sorted(pending, key=lambda p: p.created_at):
            row = self._gpus.row_of.get((pod.node, pod.gpu_index))
            if row is None or not self._nodes.accepts_pods(pod.node, now=now, eff=eff) \
                    or not eff.gpu_usable(pod.node, pod.gpu_index):
                continue
            on_gpu = held.setdefault(row, [])
            reason = self.why_not_fit(pod, row=row, held=on_gpu)
            if reason:
                pod.failed_at, pod.reason = now, reason
                continue
            self._start(pod, max(now, pod.created_at))
            on_gpu.append(pod)

    def why_not_fit(self, pod: PodRecord, *, row: int, held: Iterable[PodRecord]) -> str:
        """Why the node refuses ``pod`` on GPU ``row`` (held by ``held``); "" when it fits.

        The device plugin's replicas come first: the kubelet admits a pod only into a
        replica the node advertises and has not handed out.
        """
        held = list(held)
        where = f"{pod.node}/gpu{pod.gpu_index}"
        replicas = self._nodes.replicas(pod.node)
        if len(held) + 1 > replicas:
            config = self._nodes.running_config(pod.node)
            return (f"{ADMISSION_REASON}: Allocate failed due to requested number of devices "
                    f"unavailable for nvidia.com/gpu. Requested: 1, Available: 0 on {where} "
                    f"(config {config} advertises {replicas} per GPU, {len(held)} held)")
        threads = sum(p.thread_pct for p in held)
        if threads + pod.thread_pct > 100:
            return (f"MPS over-commit: {pod.thread_pct} % of SM threads asked, "
                    f"{100 - threads} % free on {where}")
        free = int(self._gpus.mem_total[row] - self._gpus.other_mem[row]) \
            - sum(p.memory_mib for p in held)
        if pod.memory_mib > free:
            return f"OutOfMemory: {pod.memory_mib} MiB asked, {free} MiB free on {where}"
        if len(held) + 1 > MAX_MPS_CLIENTS:
            return f"MPS client limit ({MAX_MPS_CLIENTS}) reached on {where}"
        return ""
