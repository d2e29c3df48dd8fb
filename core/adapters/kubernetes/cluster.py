"""The ``Cluster`` port on Kubernetes: the fleet, binding pods, their phases.

Why: the controller binds placement decisions as pods (SPEC §3.3 step 8) and
reads the fleet before each placement; this is that half of the adapter. The
node operations of a rolling MPS change are in ``node_ops.py``.

What it reads: every node the node selector matches (``nodes.read_node``) and
the console's pods (``pod_selector``) in every namespace, whose annotations
declare the GPU slice they hold. What it writes: pods (create, delete) and the
node's ``spec.unschedulable``.

Invariants: a slice counts on its GPU while its pod is Pending, Running or
Unknown (it holds the GPU), never once it finished; every wait for a pod has a
deadline and returns an outcome with the reason, never hangs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s

from core.errors import ValidationError
from core.model import MpsSlice, Node
from core.ports import PodNotFoundError, ReplicaPod

from .api import KubeApi, positive
from .errors import Op
from .nodes import (
    HOLDING_PHASES,
    ManagedPod,
    NodeStatus,
    PodOutcome,
    manifest_slice,
    outcome,
    phase,
    read_managed_pod,
    read_node,
)

log = logging.getLogger(__name__)


class ClusterPort(KubeApi):
    """``core.ports.Cluster``: nodes, bind, pod_phase, delete_pod, set_schedulable,
    replica_pods, plus the richer reads (``node_statuses``, ``pods``) and
    ``wait_for_pod``."""

    def nodes(self) -> tuple[Node, ...]:
        """Every GPU node with its GPUs and the slices the console's pods hold."""
        return tuple(s.node for s in self.node_statuses() if s.node is not None)

    def bind(self, pod: Mapping[str, Any]) -> None:
        """Create the pod ``core.manifest.render_pod`` rendered; returns once it exists."""
        namespace, name, _, _, _ = manifest_slice(pod, default_namespace=self.options.namespace)
        body = k8s.V1Pod.from_dict(dict(pod))
        body.metadata.namespace = namespace
        self._call(Op("create", "pods", namespace=namespace, name=name),
                   self._core.create_namespaced_pod, namespace=namespace, body=body)

    def pod_phase(self, namespace: str, name: str) -> str:
        return phase(self._read_pod(namespace, name))

    def delete_pod(self, namespace: str, name: str) -> None:
        with contextlib.suppress(PodNotFoundError):
            self._call(Op("delete", "pods", namespace=namespace, name=name),
                       self._core.delete_namespaced_pod, name=name, namespace=namespace)

    def set_schedulable(self, node: str, schedulable: bool) -> None:
        """Cordon (``False``) or uncordon (``True``) ``node``."""
        self._patch_unschedulable(node, not schedulable)

    def replica_pods(self) -> tuple[ReplicaPod, ...]:
        return tuple(ReplicaPod(namespace=p.namespace, name=p.name, node=p.node,
                                gpu_index=p.gpu_index, model=p.mps_slice.model or "",
                                owner=p.mps_slice.owner, thread_pct=p.mps_slice.thread_pct,
                                memory_mib=p.mps_slice.memory_mib, phase=p.phase)
                     for p in self.pods())

    # --------------------------------------------------------------------------------------
    # Reading the fleet
    # --------------------------------------------------------------------------------------
    def node_statuses(self) -> tuple[NodeStatus, ...]:
        """Every node the node selector matches, GPU nodes parsed, the others with the reason."""
        items = self._list(Op("list", "nodes"), self._core.list_node,
                           label_selector=self.options.node_selector or None)
        slices: dict[tuple[str, int], list[MpsSlice]] = {}
        for pod in self.pods():
            if pod.phase in HOLDING_PHASES:
                slices.setdefault((pod.node, pod.gpu_index), []).append(pod.mps_slice)
        return tuple(read_node(item, slices=slices, catalog=self._catalog, options=self.options)
                     for item in items)

    def pods(self) -> tuple[ManagedPod, ...]:
        """The console's pods (``pod_selector``) in every namespace, with their slices."""
        items = self._list(Op("list", "pods", all_namespaces=True),
                           self._core.list_pod_for_all_namespaces,
                           label_selector=self.options.pod_selector or None)
        out = []
        for item in items:
            raw = self._api.sanitize_for_serialization(item)
            try:
                out.append(read_managed_pod(raw, item, default_namespace=self.options.namespace))
            except ValidationError as exc:
                log.debug("pod %s/%s holds no slice the console can read: %s",
                          item.metadata.namespace, item.metadata.name, exc)
        return tuple(out)

    # --------------------------------------------------------------------------------------
    # Waiting for a pod
    # --------------------------------------------------------------------------------------
    def wait_for_pod(self, namespace: str, name: str, *, timeout_s: float) -> PodOutcome:
        """Watch the pod until it runs, fails or cannot start; bounded by ``timeout_s``.

        Returns ``Running``; ``Failed`` with the kubelet's reason; ``Pending``
        with a container's back-off reason (``ImagePullBackOff``,
        ``CrashLoopBackOff``…); or, at the deadline, ``timed_out`` with the
        last reason seen (e.g. the scheduler's ``Unschedulable`` message).
        Watch timeouts are whole seconds, so the wait may end up to one second
        after ``timeout_s``; it never hangs.
        """
        positive("timeout_s", timeout_s)
        deadline = self._monotonic() + timeout_s
        pod = self._read_pod(namespace, name)
        found, settled = outcome(pod)
        if settled:
            return found
        events = self._events(Op("watch", "pods", namespace=namespace, name=name),
                              self._core.list_namespaced_pod, namespace=namespace,
                              field_selector=f"metadata.name={name}",
                              resource_version=pod.metadata.resource_version, deadline=deadline)
        with contextlib.closing(events):
            for kind, obj in events:
                if kind == "DELETED":
                    return PodOutcome(phase=found.phase, reason="Deleted",
                                      message="the pod was deleted while it was awaited")
                found, settled = outcome(obj)
                if settled:
                    return found
        detail = f": {found.reason}: {found.message}" if found.reason else ""
        return PodOutcome(phase=found.phase, reason=found.reason or "Timeout",
                          message=f"not Running after {timeout_s:g} s{detail}", timed_out=True)

    def _read_pod(self, namespace: str, name: str) -> k8s.V1Pod:
        return self._call(Op("get", "pods", namespace=namespace, name=name),
                          self._core.read_namespaced_pod, name=name, namespace=namespace)
