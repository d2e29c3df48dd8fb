"""Reading ``V1Node`` and ``V1Pod`` objects into the project's values.

Why: a client object never leaves the adapter; this module is where one turns
into a ``core.model.Node``, a ``ManagedPod`` or a ``PodOutcome``. It makes no
API call: the functions take what the calling modules listed or read.

What a node says (SPEC §3.4): the labels NVIDIA's GPU feature discovery
publishes (``nvidia.com/gpu.product`` → catalog type, ``nvidia.com/gpu.memory``
in MiB, ``nvidia.com/gpu.count``, ``nvidia.com/gpu.replicas``,
``nvidia.com/gpu.sharing-strategy``, ``nvidia.com/mps.capable``), the device
plugin's capacity/allocatable ``nvidia.com/gpu`` (replicas × healthy GPUs) and
its ``nvidia.com/device-plugin.config`` label; readiness from the ``Ready``
condition; schedulability from ``spec.unschedulable`` and the
``NoSchedule``/``NoExecute`` taints a model server does not tolerate.

Invariants: a node that cannot be read as a GPU node is returned with
``node=None`` and the reason, never half-read; a ``Node`` read here always
carries ``gpu_replicas`` (an int, never "unknown read as plenty").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kubernetes import client as k8s

from core.catalog import Catalog
from core.errors import PermanentError, ValidationError
from core.manifest import read_pod
from core.model import Gpu, MpsSlice, Node
from core.mps.device_plugin import GPU_RESOURCE, NODE_LABEL
from core.ports import PodPhase

from .options import KubeOptions

log = logging.getLogger(__name__)

# Labels of NVIDIA GPU feature discovery (GFD).
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"  # MiB per GPU
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_REPLICAS = "nvidia.com/gpu.replicas"
LABEL_SHARING = "nvidia.com/gpu.sharing-strategy"
LABEL_MPS_CAPABLE = "nvidia.com/mps.capable"
DAEMONSET_KIND = "DaemonSet"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

# Container waiting reasons after which a pod will not start without a change.
_STUCK_WAITING = frozenset({
    "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CrashLoopBackOff",
    "CreateContainerConfigError",
})
HOLDING_PHASES = frozenset({PodPhase.PENDING.value, PodPhase.RUNNING.value,
                            PodPhase.UNKNOWN.value})
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_PHASES = frozenset(p.value for p in PodPhase)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as the adapter read it; ``node`` is None when it was skipped (and why)."""

    name: str
    node: Node | None
    skipped_reason: str = ""
    ready: bool = False
    unschedulable: bool = False
    taints: tuple[str, ...] = ()
    conditions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    product: str = ""
    sharing_strategy: str = "none"
    replicas: int = 1
    capacity_gpus: int | None = None
    allocatable_gpus: int | None = None
    device_plugin_config: str = ""
    mps_capable: bool = False


@dataclass(frozen=True, slots=True)
class ManagedPod:
    """A pod of the console with the GPU slice its annotations declare."""

    namespace: str
    name: str
    node: str
    gpu_index: int
    phase: str
    mps_slice: MpsSlice


@dataclass(frozen=True, slots=True)
class PodOutcome:
    """How waiting for a pod ended: its phase and, when it did not run, why."""

    phase: str
    reason: str = ""
    message: str = ""
    timed_out: bool = False

    @property
    def running(self) -> bool:
        return self.phase == PodPhase.RUNNING.value


# ------------------------------------------------------------------------------------------
# Nodes
# ------------------------------------------------------------------------------------------
def read_node(item: k8s.V1Node, *, slices: Mapping[tuple[str, int], list[MpsSlice]],
              catalog: Catalog, options: KubeOptions) -> NodeStatus:
    """``item`` as a ``NodeStatus``: its GPUs with the ``slices`` held on them (by
    ``(node, gpu index)``), or skipped with the reason. ``PermanentError`` for an unknown
    product when ``options.strict_products``."""
    name = item.metadata.name
    labels = dict(item.metadata.labels or {})
    spec = item.spec or k8s.V1NodeSpec()
    status = item.status or k8s.V1NodeStatus()
    conditions = {c.type: c.status for c in status.conditions or ()}
    taints = tuple(spec.taints or ())
    blocking = [t for t in taints if t.effect in _BLOCKING_EFFECTS
                and t.key not in options.tolerated_taints]
    common: dict[str, Any] = {
        "name": name,
        "ready": conditions.get("Ready") == "True",
        "unschedulable": bool(spec.unschedulable),
        "taints": tuple(_taint_text(t) for t in taints),
        "conditions": MappingProxyType(conditions),
        "product": labels.get(LABEL_PRODUCT, ""),
        "sharing_strategy": labels.get(LABEL_SHARING, "none"),
        "capacity_gpus": gpu_count(status.capacity),
        "allocatable_gpus": gpu_count(status.allocatable),
        "device_plugin_config": labels.get(NODE_LABEL, ""),
        "mps_capable": labels.get(LABEL_MPS_CAPABLE) == "true",
    }
    product = common["product"]
    if not product:
        why = ("no nvidia.com/gpu.product label: GPU feature discovery has not labelled it"
               if common["capacity_gpus"] else "not a GPU node (no GPU labels, no "
               "nvidia.com/gpu capacity)")
        return NodeStatus(node=None, skipped_reason=why, **common)
    gpu_type = gpu_type_of(product, catalog=catalog, options=options)
    if gpu_type is None:
        why = (f"unknown GPU type: product {product!r} matches none of the catalog's "
               f"types ({', '.join(catalog.names)}); map it in product_types")
        if options.strict_products:
            raise PermanentError(f"node {name}: {why}")
        log.warning("skipping node %s: %s", name, why)
        return NodeStatus(node=None, skipped_reason=why, **common)
    try:
        replicas = _label_int(labels, LABEL_REPLICAS, default=1, minimum=1)
        count = _label_int(labels, LABEL_COUNT, minimum=0,
                           default=(common["capacity_gpus"] or 0) // replicas)
        memory = _label_int(labels, LABEL_MEMORY, minimum=1,
                            default=catalog[gpu_type].memory_mib)
    except ValidationError as exc:
        return NodeStatus(node=None, skipped_reason=str(exc), **common)
    # The device plugin withdraws an unhealthy GPU's replicas from allocatable; which
    # index failed is not published, so the last ones are marked unhealthy.
    healthy = min(count, (common["allocatable_gpus"] or 0) // replicas)
    mig = "MIG" in _tokens(product)
    gpus = tuple(
        Gpu(index=i, gpu_type=gpu_type, memory_total_mib=memory,
            slices=tuple(slices.get((name, i), ())), healthy=i < healthy, mig_enabled=mig)
        for i in range(count))
    try:
        node = Node(name=name, gpus=gpus, ready=common["ready"],
                    schedulable=not spec.unschedulable and not blocking,
                    labels=MappingProxyType(labels),
                    device_plugin_config=common["device_plugin_config"],
                    gpu_replicas=replicas)
    except ValidationError as exc:
        return NodeStatus(node=None, skipped_reason=str(exc), **common)
    return NodeStatus(node=node, replicas=replicas, **common)


def gpu_type_of(product: str, *, catalog: Catalog, options: KubeOptions) -> str | None:
    """The catalog type of a GFD product name: mapped explicitly, else the longest type
    name that is a token of the product (``NVIDIA-A100-SXM4-40GB`` → ``A100``)."""
    explicit = options.product_types.get(product)
    if explicit is not None:
        return explicit if explicit in catalog.names else None
    tokens = _tokens(product)
    hits = [n for n in catalog.names if n.upper() in tokens]
    return max(hits, key=len) if hits else None


def gpu_count(resources: Mapping[str, str] | None) -> int | None:
    """``nvidia.com/gpu`` of a capacity/allocatable map; None when absent or not whole."""
    raw = (resources or {}).get(GPU_RESOURCE)
    if raw is None:
        return None
    return int(raw) if str(raw).isdigit() else None


def _label_int(labels: Mapping[str, str], key: str, *, default: int, minimum: int) -> int:
    raw = labels.get(key)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise ValidationError(f"labels.{key}", f"{raw!r} is not a whole number ≥ {minimum}")
    return int(raw)


def _tokens(product: str) -> set[str]:
    return set(re.split(r"[^A-Z0-9]+", product.upper()))


def _taint_text(taint: k8s.V1Taint) -> str:
    value = f"={taint.value}" if taint.value else ""
    return f"{taint.key}{value}:{taint.effect}"


# ------------------------------------------------------------------------------------------
# Pods
# ------------------------------------------------------------------------------------------
def manifest_slice(pod: Mapping[str, Any], *, default_namespace: str
                   ) -> tuple[str, str, str, int, MpsSlice]:
    """``(namespace, name, node, gpu index, slice)`` of a rendered pod (``read_pod``)."""
    p = read_pod(pod, default_namespace=default_namespace)
    return p.namespace, p.name, p.node, p.gpu_index, p.mps_slice


def read_managed_pod(raw: Mapping[str, Any], *, default_namespace: str) -> ManagedPod:
    """The console's pod ``raw`` (as the API server's JSON: no client model is built)
    with its slice; ``ValidationError`` when its annotations declare none."""
    namespace, name, node, gpu_index, mps_slice = manifest_slice(
        raw, default_namespace=default_namespace)
    node = (raw.get("spec") or {}).get("nodeName") or node
    value = (raw.get("status") or {}).get("phase")
    return ManagedPod(namespace=namespace, name=name, node=node, gpu_index=gpu_index,
                      phase=value if value in _PHASES else PodPhase.PENDING.value,
                      mps_slice=mps_slice)


def phase(pod: k8s.V1Pod) -> str:
    """The pod's phase, one of ``PodPhase``'s values (``Pending`` when not reported)."""
    value = pod.status.phase if pod.status else None
    return value if value in {p.value for p in PodPhase} else PodPhase.PENDING.value


def pod_ready(pod: k8s.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or ()
    return phase(pod) == PodPhase.RUNNING.value and any(
        c.type == "Ready" and c.status == "True" for c in conditions)


def describe(pod: k8s.V1Pod) -> str:
    """``Phase: reason`` for messages."""
    found, _ = outcome(pod)
    return f"{found.phase}: {found.reason}" if found.reason else found.phase


def outcome(pod: k8s.V1Pod) -> tuple[PodOutcome, bool]:
    """The pod's outcome so far, and whether waiting longer can change it."""
    current = phase(pod)
    status = pod.status or k8s.V1PodStatus()
    statuses = [*(status.init_container_statuses or ()), *(status.container_statuses or ())]
    if current == PodPhase.RUNNING.value:
        return PodOutcome(phase=current), True
    if current in (PodPhase.FAILED.value, PodPhase.SUCCEEDED.value):
        reason, message = status.reason or "", status.message or ""
        for cs in statuses:
            term = cs.state.terminated if cs.state else None
            if term is not None and not reason:
                reason, message = term.reason or "", term.message or f"exit code {term.exit_code}"
        if current == PodPhase.SUCCEEDED.value:
            reason = reason or "Completed"
        return PodOutcome(phase=current, reason=reason, message=message), True
    for cs in statuses:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in _STUCK_WAITING:
            return PodOutcome(phase=current, reason=waiting.reason,
                              message=waiting.message or ""), True
    for condition in status.conditions or ():
        if condition.type == "PodScheduled" and condition.status == "False":
            return PodOutcome(phase=current, reason=condition.reason or "",
                              message=condition.message or ""), False
    return PodOutcome(phase=current), False


def outcome_of_raw(pod: Mapping[str, Any]) -> tuple[PodOutcome, bool]:
    """``outcome`` of a pod as the API server's JSON (a watch event's object), without
    building a ``V1Pod``: the same answer, at a fraction of the cost per event."""
    status = pod.get("status") or {}
    raw_phase = status.get("phase")
    current = raw_phase if raw_phase in _PHASES else PodPhase.PENDING.value
    statuses = [*(status.get("initContainerStatuses") or ()),
                *(status.get("containerStatuses") or ())]
    if current == PodPhase.RUNNING.value:
        return PodOutcome(phase=current), True
    if current in (PodPhase.FAILED.value, PodPhase.SUCCEEDED.value):
        reason, message = status.get("reason") or "", status.get("message") or ""
        for cs in statuses:
            term = (cs.get("state") or {}).get("terminated")
            if term is not None and not reason:
                reason = term.get("reason") or ""
                message = term.get("message") or f"exit code {term.get('exitCode')}"
        if current == PodPhase.SUCCEEDED.value:
            reason = reason or "Completed"
        return PodOutcome(phase=current, reason=reason, message=message), True
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting is not None and waiting.get("reason") in _STUCK_WAITING:
            return PodOutcome(phase=current, reason=waiting["reason"],
                              message=waiting.get("message") or ""), True
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return PodOutcome(phase=current, reason=condition.get("reason") or "",
                              message=condition.get("message") or ""), False
    return PodOutcome(phase=current), False


def stays_on_drain(pod: k8s.V1Pod) -> str:
    """Why a drain leaves ``pod`` where it is ("" when it must be evicted)."""
    meta = pod.metadata
    if MIRROR_ANNOTATION in (meta.annotations or {}):
        return "mirror (static) pod: managed by the kubelet"
    if any(ref.kind == DAEMONSET_KIND for ref in meta.owner_references or ()):
        return "DaemonSet pod: it would be recreated on the node"
    current = phase(pod)
    if current in (PodPhase.SUCCEEDED.value, PodPhase.FAILED.value):
        return f"finished ({current})"
    return ""
