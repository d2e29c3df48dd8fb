"""Replicas a rollout moves: deterministic copy ids, requests made from pods, fit helpers.

Why a module of its own: ``core.controller.rollout_actions`` copies, binds back and
retires replicas; the small pure helpers it needs are here so that module stays about
the steps. Invariant: ``copy_id`` is a pure function of (original, plan, step), so a
step run again after a crash queues or binds the very same copy, never a second one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from core.model import Node, PlacementRequest, Priority, WorkloadClass
from core.placement.filters import GPU_IN_USE_LABEL, GPU_TYPE_LABEL
from core.ports import ReplicaPod

_AUTOSCALER_HINTS = (GPU_TYPE_LABEL, GPU_IN_USE_LABEL)


def copy_id(original: str, *, plan_id: int, seq: int) -> str:
    """A deterministic request id for the copy of ``original`` made by one step."""
    digest = hashlib.sha256(f"{original}|{plan_id}|{seq}".encode()).hexdigest()[:12]
    return f"ro{plan_id}-{digest}"


def pod_key(p: ReplicaPod) -> str:
    return f"{p.namespace}/{p.name}"


def request_from_pod(p: ReplicaPod, *, request_id: str,
                     priority: Priority = Priority.MEDIUM) -> PlacementRequest:
    """A request for another replica like ``p`` (for pods the store has no request of)."""
    return PlacementRequest(model_name=p.model, model_memory_gb=max(p.memory_mib, 1) / 1024,
                            priority=priority, latency_sla_ms=1000.0, namespace=p.namespace,
                            request_id=request_id)


def with_id(request: PlacementRequest, request_id: str) -> PlacementRequest:
    """A replica like ``request`` under another id, for a rollout's copy or return. The
    autoscaler's placement hints (the GPU type and the GPU in use it sized the original
    for) are dropped: they held when it planned, and a replica moved out of a node's way
    goes wherever it fits, rather than failing the rollout for a stale plan."""
    labels = {k: v for k, v in request.labels.items() if k not in _AUTOSCALER_HINTS}
    return PlacementRequest(model_name=request.model_name,
                            model_memory_gb=request.model_memory_gb, priority=request.priority,
                            latency_sla_ms=request.latency_sla_ms,
                            expected_qps=request.expected_qps, batch_size=request.batch_size,
                            namespace=request.namespace, labels=MappingProxyType(labels),
                            request_id=request_id)


def union(before: Sequence[str] | None, now: Sequence[str]) -> list[str]:
    """``before`` then the new ones of ``now``, in order (step details grow across runs)."""
    out = list(before or ())
    return out + [x for x in now if x not in out]


def pod_of(entry: Mapping[str, Any]) -> ReplicaPod:
    """The pod a step recorded (a move or a drain target), enough to ask for a replica."""
    ns, name = str(entry.get("pod", "default/x")).split("/", 1)
    owner = str(entry.get("original", entry.get("owner", "")))
    return ReplicaPod(namespace=str(entry.get("namespace", ns)), name=name, node="",
                      gpu_index=0, model=str(entry["model"]), owner=owner, thread_pct=1,
                      memory_mib=int(entry["memory_mib"]), phase="")


def workload_class(nodes: Sequence[Node], pod: ReplicaPod) -> WorkloadClass:
    """The class of ``pod``'s slice as the cluster reports it (medium when it says none)."""
    for n in nodes:
        for g in n.gpus:
            for s in g.slices:
                if s.owner == pod.owner and s.workload_class is not None:
                    return s.workload_class
    return WorkloadClass.MEDIUM
