"""The ``Cluster`` port on a real Kubernetes cluster, through the official ``kubernetes`` client.

Why: in production the controller binds placement decisions and changes MPS
configuration on a real cluster (SPEC §3.3 step 8, §4.1). This module is the
only one that imports ``kubernetes``; a ``V1Node``, ``V1Pod`` or
``ApiException`` never leaves it: callers get ``core.model`` values and the
frozen dataclasses defined here.

What it reads (SPEC §3.4):
- GPU nodes from the labels NVIDIA's GPU feature discovery publishes
  (``nvidia.com/gpu.product`` → catalog type, ``nvidia.com/gpu.memory`` in MiB,
  ``nvidia.com/gpu.count``, ``nvidia.com/gpu.replicas``,
  ``nvidia.com/gpu.sharing-strategy``, ``nvidia.com/mps.capable``) and the
  device plugin's capacity/allocatable ``nvidia.com/gpu`` (replicas × healthy
  GPUs); readiness from the ``Ready`` condition; schedulability from
  ``spec.unschedulable`` and the ``NoSchedule``/``NoExecute`` taints a model
  server does not tolerate;
- the GPU slices pods hold, from the annotations ``core.manifest`` writes.

What it writes: pods (create, delete), evictions (drain, respecting
PodDisruptionBudgets), the node's ``spec.unschedulable`` (cordon) and its
``nvidia.com/device-plugin.config`` label, the device plugin's ConfigMap of
named configs; it restarts the device-plugin pod of one node by deleting it
(its DaemonSet recreates it). The verbs this needs, and nothing more, are
granted in ``deploy/k8s/rbac.yaml``; a test checks the two agree.

Invariants:
- every client or connection failure goes through ``_translate`` (the one
  translation function), raised with ``raise … from``: 409 on a write that
  carried a ``resourceVersion`` → ``ConflictError``, retried here after a
  fresh read; 429 and 5xx → ``TransientError`` whose delay honours
  ``Retry-After``; 401/403 → ``PermanentError`` naming the refused verb,
  resource and namespace; 404 → ``PodNotFoundError``/``NodeNotFoundError``;
  a refused connection → ``TransientError``;
- every wait (pod start, drain, device-plugin restart) has a deadline and
  returns an outcome with the reason when it passes, never hangs; watches
  carry a server-side timeout and a client read timeout;
- labels and ConfigMaps are changed with the ``resourceVersion`` that was
  read, so a concurrent writer is never overwritten.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch import Watch
from urllib3.util.retry import Retry

from core.adapters.errors import innermost_reason
from core.catalog import Catalog
from core.errors import PermanentError, SchedulerError, TransientError, ValidationError
from core.manifest import (
    MANAGED_BY,
    read_pod,
)
from core.model import Gpu, MpsSlice, Node
from core.mps.device_plugin import GPU_RESOURCE, NODE_LABEL
from core.ports import PodExistsError, PodNotFoundError, PodPhase, ReplicaPod

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
STRATEGIC_MERGE = "application/strategic-merge-patch+json"

# Environment variables ``options_from_env`` reads (set in deploy/k8s).
ENV_NAMESPACE = "GSC_KUBE_NAMESPACE"
ENV_NODE_SELECTOR = "GSC_KUBE_NODE_SELECTOR"
ENV_POD_SELECTOR = "GSC_KUBE_POD_SELECTOR"
ENV_PLUGIN_NAMESPACE = "GSC_KUBE_DEVICE_PLUGIN_NAMESPACE"
ENV_PLUGIN_SELECTOR = "GSC_KUBE_DEVICE_PLUGIN_SELECTOR"
ENV_PLUGIN_CONFIG_MAP = "GSC_KUBE_DEVICE_PLUGIN_CONFIG_MAP"

# Container waiting reasons after which a pod will not start without a change.
_STUCK_WAITING = frozenset({
    "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CrashLoopBackOff",
    "CreateContainerConfigError",
})
_HOLDING_PHASES = frozenset({PodPhase.PENDING.value, PodPhase.RUNNING.value,
                             PodPhase.UNKNOWN.value})
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_WATCH_READ_SLACK_S = 5.0
# Inside the client, retry only connections that were refused or dropped before the request
# was sent (always safe); never a read (a create could run twice) nor a status: urllib3 would
# otherwise sleep Retry-After on 429/503 itself, out of the caller's sight.
_CLIENT_RETRIES = Retry(total=2, connect=2, read=0, redirect=0, status=0, other=0,
                        respect_retry_after_header=False, raise_on_status=False)


# ==========================================================================================
# Errors and options
# ==========================================================================================
class ConflictError(TransientError):
    """HTTP 409 on a write carrying a stale ``resourceVersion``: read again, then retry."""


class NodeNotFoundError(ValidationError, PermanentError):
    """The node named does not exist (the twin refuses an unknown node the same way)."""

    def __init__(self, node: str) -> None:
        super().__init__("node", f"{node!r} is not a node of this cluster")


class InvalidObjectError(ValidationError, PermanentError):
    """The API server refused an object as invalid (HTTP 400/422)."""


@dataclass(frozen=True, slots=True)
class KubeOptions:
    """Where the adapter looks and how patiently it waits.

    ``namespace``: the workload namespace (pods whose manifest names none are
    created there); ``node_selector``: label selector of the GPU nodes ("" =
    every node; nodes without GPUs are skipped); ``pod_selector``: the pods
    whose GPU slices count (the console's own); the device plugin's
    namespace, pod selector and ConfigMap of named configs;
    ``product_types``: exact ``nvidia.com/gpu.product`` → catalog type, for
    products whose name does not contain the type; ``strict_products``: raise
    on an unknown product instead of skipping the node; ``tolerated_taints``:
    taint keys model servers tolerate (``nvidia.com/gpu``: added by the
    ExtendedResourceToleration admission plugin to pods that request GPUs).
    Times in seconds.
    """

    namespace: str = "default"
    node_selector: str = ""
    pod_selector: str = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    device_plugin_namespace: str = "nvidia-device-plugin"
    device_plugin_selector: str = "app.kubernetes.io/name=nvidia-device-plugin"
    device_plugin_config_map: str = "nvidia-device-plugin-configs"
    product_types: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    strict_products: bool = False
    tolerated_taints: frozenset[str] = frozenset({GPU_RESOURCE})
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    retry_delay_s: float = 2.0
    poll_interval_s: float = 1.0
    conflict_retries: int = 5
    page_size: int = 500

    def __post_init__(self) -> None:
        for name in ("namespace", "device_plugin_namespace"):
            if not _DNS_LABEL.match(getattr(self, name)):
                raise ValidationError(f"kubernetes.{name}", "must be a lowercase DNS label")
        if not _CONFIG_KEY.match(self.device_plugin_config_map):
            raise ValidationError("kubernetes.device_plugin_config_map",
                                  "must be a valid ConfigMap name")
        for name in ("connect_timeout_s", "request_timeout_s", "retry_delay_s",
                     "poll_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValidationError(f"kubernetes.{name}", "must be a number > 0")
        if self.conflict_retries < 0:
            raise ValidationError("kubernetes.conflict_retries", "must be ≥ 0")
        if self.page_size < 1:
            raise ValidationError("kubernetes.page_size", "must be ≥ 1")
        object.__setattr__(self, "product_types", MappingProxyType(dict(self.product_types)))


def options_from_env(env: Mapping[str, str] | None = None) -> KubeOptions:
    """``KubeOptions`` from ``GSC_KUBE_*`` environment variables (unset: the default)."""
    env = os.environ if env is None else env
    names = {
        "namespace": ENV_NAMESPACE, "node_selector": ENV_NODE_SELECTOR,
        "pod_selector": ENV_POD_SELECTOR, "device_plugin_namespace": ENV_PLUGIN_NAMESPACE,
        "device_plugin_selector": ENV_PLUGIN_SELECTOR,
        "device_plugin_config_map": ENV_PLUGIN_CONFIG_MAP,
    }
    values = {key: env[var].strip() for key, var in names.items() if var in env}
    return KubeOptions(**values)


# ==========================================================================================
# What the adapter hands out
# ==========================================================================================
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


@dataclass(frozen=True, slots=True)
class DrainResult:
    """``completed`` when every evictable pod left the node before the deadline."""

    node: str
    completed: bool
    evicted: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (namespace/name, why it stays)
    blocked: tuple[tuple[str, str], ...] = ()  # (namespace/name, last refusal)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PluginRestart:
    """``ready`` when new device-plugin pods run and the node advertises the GPUs expected."""

    node: str
    ready: bool
    pods: tuple[str, ...] = ()
    allocatable_gpus: int | None = None
    reason: str = ""


# ==========================================================================================
# The adapter
# ==========================================================================================
@dataclass(frozen=True, slots=True)
class _Op:
    """One API call, as RBAC sees it: for messages that name what was refused."""

    verb: str
    resource: str
    _: KW_ONLY
    namespace: str | None = None
    name: str | None = None
    all_namespaces: bool = False

    def __str__(self) -> str:
        if self.namespace:
            scope = f" in namespace {self.namespace}"
        elif self.all_namespaces:
            scope = " in all namespaces"
        else:
            scope = " at the cluster scope"
        return f"{self.verb} {self.resource}{scope}"

    @property
    def target(self) -> str:
        if self.name and self.namespace:
            return f"{self.resource} {self.namespace}/{self.name}"
        return f"{self.resource} {self.name}" if self.name else self.resource


class KubernetesCluster:
    """The ``Cluster`` port (and the rollout operations of SPEC §4.1) on Kubernetes.

    Talks to the API server ``configuration`` names (a copy is taken; its
    retries are set so that only refused connections are retried inside the
    client, while 429/5xx come back here to be translated, never slept on
    silently). ``close()`` closes the connection pools. ``sleep`` and
    ``monotonic`` are injectable so that waits can be driven by tests.
    """

    def __init__(
        self,
        configuration: k8s.Configuration,
        *,
        catalog: Catalog,
        options: KubeOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        configuration = copy.deepcopy(configuration)
        configuration.retries = _CLIENT_RETRIES
        self._api = k8s.ApiClient(configuration)
        self._core = k8s.CoreV1Api(self._api)
        self._catalog = catalog
        self.options = options or KubeOptions()
        self._sleep = sleep
        self._monotonic = monotonic
        self._timeout = (self.options.connect_timeout_s, self.options.request_timeout_s)

    # --------------------------------------------------------------------------------------
    # Construction and lifetime
    # --------------------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        *,
        catalog: Catalog,
        options: KubeOptions | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        in_cluster: bool | None = None,
    ) -> KubernetesCluster:
        """Load the in-cluster service account or a kubeconfig and connect.

        ``in_cluster=None`` picks the service account when running in a pod
        (``KUBERNETES_SERVICE_HOST`` is set) and no kubeconfig is named, else
        the kubeconfig: ``kubeconfig``, then ``$KUBECONFIG``, then
        ``~/.kube/config``.
        """
        configuration = k8s.Configuration()
        if in_cluster is None:
            in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
        try:
            if in_cluster:
                k8s_config.load_incluster_config(client_configuration=configuration)
                source = "the in-cluster service account"
            else:
                path = os.fspath(kubeconfig) if kubeconfig is not None else \
                    os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
                k8s_config.load_kube_config(config_file=path, context=context,
                                            client_configuration=configuration,
                                            persist_config=False)
                source = f"kubeconfig {path}" + (f" (context {context})" if context else "")
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            where = "in-cluster config" if in_cluster else "kubeconfig"
            raise PermanentError(f"cannot load the Kubernetes {where}: {exc}") from exc
        log.info("Kubernetes API at %s from %s", configuration.host, source)
        return cls(configuration, catalog=catalog, options=options)

    def close(self) -> None:
        """Close the client's connection pools."""
        self._api.close()

    def __enter__(self) -> KubernetesCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------
    # Cluster port
    # --------------------------------------------------------------------------------------
    def nodes(self) -> tuple[Node, ...]:
        """Every GPU node with its GPUs and the slices the console's pods hold."""
        return tuple(s.node for s in self.node_statuses() if s.node is not None)

    def bind(self, pod: Mapping[str, Any]) -> None:
        """Create the pod ``core.manifest.render_pod`` rendered; returns once it exists."""
        namespace, name, _, _, _ = _manifest_slice(pod, default_namespace=self.options.namespace)
        body = k8s.V1Pod.from_dict(dict(pod))
        body.metadata.namespace = namespace
        self._call(_Op("create", "pods", namespace=namespace, name=name),
                   self._core.create_namespaced_pod, namespace=namespace, body=body)

    def pod_phase(self, namespace: str, name: str) -> str:
        return _phase(self._read_pod(namespace, name))

    def delete_pod(self, namespace: str, name: str) -> None:
        with contextlib.suppress(PodNotFoundError):
            self._call(_Op("delete", "pods", namespace=namespace, name=name),
                       self._core.delete_namespaced_pod, name=name, namespace=namespace)

    def set_schedulable(self, node: str, schedulable: bool) -> None:
        """Cordon (``False``) or uncordon (``True``) ``node``."""
        self._call(_Op("patch", "nodes", name=node), self._core.patch_node, name=node,
                   body={"spec": {"unschedulable": not schedulable}},
                   _content_type=STRATEGIC_MERGE)

    # --------------------------------------------------------------------------------------
    # Reading the fleet
    # --------------------------------------------------------------------------------------
    def node_statuses(self) -> tuple[NodeStatus, ...]:
        """Every node the node selector matches, GPU nodes parsed, the others with the reason."""
        items = self._list(_Op("list", "nodes"), self._core.list_node,
                           label_selector=self.options.node_selector or None)
        slices: dict[tuple[str, int], list[MpsSlice]] = {}
        for pod in self.pods():
            if pod.phase in _HOLDING_PHASES:
                slices.setdefault((pod.node, pod.gpu_index), []).append(pod.mps_slice)
        return tuple(self._node_status(item, slices) for item in items)

    def pods(self) -> tuple[ManagedPod, ...]:
        """The console's pods (``pod_selector``) in every namespace, with their slices."""
        items = self._list(_Op("list", "pods", all_namespaces=True),
                           self._core.list_pod_for_all_namespaces,
                           label_selector=self.options.pod_selector or None)
        out = []
        for item in items:
            raw = self._api.sanitize_for_serialization(item)
            try:
                namespace, name, node, gpu_index, mps_slice = _manifest_slice(
                    raw, default_namespace=self.options.namespace)
            except ValidationError as exc:
                log.debug("pod %s/%s holds no slice the console can read: %s",
                          item.metadata.namespace, item.metadata.name, exc)
                continue
            node = (item.spec.node_name if item.spec else None) or node
            out.append(ManagedPod(namespace=namespace, name=name, node=node,
                                  gpu_index=gpu_index, phase=_phase(item), mps_slice=mps_slice))
        return tuple(out)

    def replica_pods(self) -> tuple[ReplicaPod, ...]:
        return tuple(ReplicaPod(namespace=p.namespace, name=p.name, node=p.node,
                                gpu_index=p.gpu_index, model=p.mps_slice.model or "",
                                owner=p.mps_slice.owner, thread_pct=p.mps_slice.thread_pct,
                                memory_mib=p.mps_slice.memory_mib, phase=p.phase)
                     for p in self.pods())

    def _node_status(self, item: k8s.V1Node,
                     slices: Mapping[tuple[str, int], list[MpsSlice]]) -> NodeStatus:
        name = item.metadata.name
        labels = dict(item.metadata.labels or {})
        spec = item.spec or k8s.V1NodeSpec()
        status = item.status or k8s.V1NodeStatus()
        conditions = {c.type: c.status for c in status.conditions or ()}
        taints = tuple(spec.taints or ())
        blocking = [t for t in taints if t.effect in _BLOCKING_EFFECTS
                    and t.key not in self.options.tolerated_taints]
        common: dict[str, Any] = {
            "name": name,
            "ready": conditions.get("Ready") == "True",
            "unschedulable": bool(spec.unschedulable),
            "taints": tuple(_taint_text(t) for t in taints),
            "conditions": MappingProxyType(conditions),
            "product": labels.get(LABEL_PRODUCT, ""),
            "sharing_strategy": labels.get(LABEL_SHARING, "none"),
            "capacity_gpus": _gpu_count(status.capacity),
            "allocatable_gpus": _gpu_count(status.allocatable),
            "device_plugin_config": labels.get(NODE_LABEL, ""),
            "mps_capable": labels.get(LABEL_MPS_CAPABLE) == "true",
        }
        product = common["product"]
        if not product:
            why = ("no nvidia.com/gpu.product label: GPU feature discovery has not labelled it"
                   if common["capacity_gpus"] else "not a GPU node (no GPU labels, no "
                   "nvidia.com/gpu capacity)")
            return NodeStatus(node=None, skipped_reason=why, **common)
        gpu_type = self._gpu_type(product)
        if gpu_type is None:
            why = (f"unknown GPU type: product {product!r} matches none of the catalog's "
                   f"types ({', '.join(self._catalog.names)}); map it in product_types")
            if self.options.strict_products:
                raise PermanentError(f"node {name}: {why}")
            log.warning("skipping node %s: %s", name, why)
            return NodeStatus(node=None, skipped_reason=why, **common)
        try:
            replicas = _label_int(labels, LABEL_REPLICAS, default=1, minimum=1)
            count = _label_int(labels, LABEL_COUNT, minimum=0,
                               default=(common["capacity_gpus"] or 0) // replicas)
            memory = _label_int(labels, LABEL_MEMORY, minimum=1,
                                default=self._catalog[gpu_type].memory_mib)
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
                        labels=MappingProxyType(labels))
        except ValidationError as exc:
            return NodeStatus(node=None, skipped_reason=str(exc), **common)
        return NodeStatus(node=node, replicas=replicas, **common)

    def _gpu_type(self, product: str) -> str | None:
        explicit = self.options.product_types.get(product)
        if explicit is not None:
            return explicit if explicit in self._catalog.names else None
        tokens = _tokens(product)
        hits = [n for n in self._catalog.names if n.upper() in tokens]
        return max(hits, key=len) if hits else None

    # --------------------------------------------------------------------------------------
    # Pods
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
        _positive("timeout_s", timeout_s)
        deadline = self._monotonic() + timeout_s
        pod = self._read_pod(namespace, name)
        outcome, settled = _outcome(pod)
        if settled:
            return outcome
        events = self._events(_Op("watch", "pods", namespace=namespace, name=name),
                              self._core.list_namespaced_pod, namespace=namespace,
                              field_selector=f"metadata.name={name}",
                              resource_version=pod.metadata.resource_version, deadline=deadline)
        with contextlib.closing(events):
            for kind, obj in events:
                if kind == "DELETED":
                    return PodOutcome(phase=outcome.phase, reason="Deleted",
                                      message="the pod was deleted while it was awaited")
                outcome, settled = _outcome(obj)
                if settled:
                    return outcome
        detail = f": {outcome.reason}: {outcome.message}" if outcome.reason else ""
        return PodOutcome(phase=outcome.phase, reason=outcome.reason or "Timeout",
                          message=f"not Running after {timeout_s:g} s{detail}", timed_out=True)

    def _read_pod(self, namespace: str, name: str) -> k8s.V1Pod:
        return self._call(_Op("get", "pods", namespace=namespace, name=name),
                          self._core.read_namespaced_pod, name=name, namespace=namespace)

    # --------------------------------------------------------------------------------------
    # Nodes: cordon, drain
    # --------------------------------------------------------------------------------------
    def cordon(self, node: str) -> None:
        self.set_schedulable(node, False)

    def uncordon(self, node: str) -> None:
        self.set_schedulable(node, True)

    def drain(self, node: str, *, timeout_s: float) -> DrainResult:
        """Evict every pod of ``node`` through the Eviction API, then wait until they are gone.

        DaemonSet pods and mirror (static) pods stay, as with ``kubectl
        drain``; finished pods are left alone. A PodDisruptionBudget refusal
        (HTTP 429) is retried after ``Retry-After`` (else ``retry_delay_s``)
        until ``timeout_s``; then the result says which pods are blocked and
        why. Cordon the node first, or evicted pods may come back to it.
        """
        _positive("timeout_s", timeout_s)
        deadline = self._monotonic() + timeout_s
        skipped: list[tuple[str, str]] = []
        targets: dict[str, k8s.V1Pod] = {}
        for pod in self._pods_on_node(node):
            key = f"{pod.metadata.namespace}/{pod.metadata.name}"
            why = _stays_on_drain(pod)
            if why:
                skipped.append((key, why))
            else:
                targets[key] = pod
        evicted: dict[str, str] = {}  # key → uid
        refusals: dict[str, str] = {}
        while targets:
            wait = self.options.retry_delay_s
            for key, pod in list(targets.items()):
                try:
                    self._evict(pod)
                except PodNotFoundError:
                    pass  # already gone
                except TransientError as exc:
                    refusals[key] = str(exc)
                    wait = max(wait, exc.delay)
                    continue
                evicted[key] = pod.metadata.uid
                del targets[key]
            if targets and self._monotonic() + wait > deadline:
                blocked = tuple((k, refusals.get(k, "")) for k in targets)
                listed = "; ".join(f"{k}: {why}" for k, why in blocked)
                return DrainResult(
                    node=node, completed=False, evicted=tuple(evicted), skipped=tuple(skipped),
                    blocked=blocked,
                    reason=f"gave up after {timeout_s:g} s: {len(blocked)} pod(s) not evicted "
                           f"({listed})")
            if targets:
                self._sleep(wait)
        while True:
            left = [f"{p.metadata.namespace}/{p.metadata.name}" for p in self._pods_on_node(node)
                    if evicted.get(f"{p.metadata.namespace}/{p.metadata.name}")
                    == p.metadata.uid]
            if not left:
                return DrainResult(node=node, completed=True, evicted=tuple(evicted),
                                   skipped=tuple(skipped))
            if self._monotonic() + self.options.poll_interval_s > deadline:
                return DrainResult(
                    node=node, completed=False, evicted=tuple(evicted), skipped=tuple(skipped),
                    reason=f"gave up after {timeout_s:g} s: evicted pod(s) still terminating: "
                           f"{', '.join(left)}")
            self._sleep(self.options.poll_interval_s)

    def _pods_on_node(self, node: str) -> list[k8s.V1Pod]:
        return self._list(_Op("list", "pods", all_namespaces=True),
                          self._core.list_pod_for_all_namespaces,
                          field_selector=f"spec.nodeName={node}")

    def _evict(self, pod: k8s.V1Pod) -> None:
        name, namespace = pod.metadata.name, pod.metadata.namespace
        body = k8s.V1Eviction(api_version="policy/v1", kind="Eviction",
                              metadata=k8s.V1ObjectMeta(name=name, namespace=namespace))
        self._call(_Op("create", "pods/eviction", namespace=namespace, name=name),
                   self._core.create_namespaced_pod_eviction, name=name, namespace=namespace,
                   body=body)

    # --------------------------------------------------------------------------------------
    # Device plugin: named config per node, the ConfigMap, restarts
    # --------------------------------------------------------------------------------------
    def set_device_plugin_config(self, node: str, config: str) -> None:
        """Select the named config ``config`` for ``node`` (its ``nvidia.com/device-plugin.config``
        label).

        Refuses a name the device plugin's ConfigMap does not hold (the plugin
        would fail to start). The label is written with the node's
        ``resourceVersion``; a conflict is retried after a fresh read.
        """
        if not config or not _LABEL_VALUE.match(config):
            raise ValidationError("config", f"{config!r} is not a valid label value")
        known = self._plugin_config_map().data or {}
        if config not in known:
            raise ValidationError("config", f"{config!r} is not a named config of ConfigMap "
                                  f"{self._config_map_ref} (it holds: "
                                  f"{', '.join(sorted(known)) or 'nothing'})")

        def attempt() -> None:
            current = self._call(_Op("get", "nodes", name=node), self._core.read_node, name=node)
            if (current.metadata.labels or {}).get(NODE_LABEL) == config:
                return
            body = {"metadata": {"resourceVersion": current.metadata.resource_version,
                                 "labels": {NODE_LABEL: config}}}
            self._call(_Op("patch", "nodes", name=node), self._core.patch_node, name=node,
                       body=body, _content_type=STRATEGIC_MERGE)

        self._with_fresh_reads(attempt, what=f"the {NODE_LABEL} label of node {node}")

    def patch_device_plugin_configs(self, configs: Mapping[str, str]) -> None:
        """Add or replace named configs (name → YAML, e.g. ``DevicePluginPlan.config_map_data``)
        in the device plugin's ConfigMap; configs not named are kept."""
        for key, text in configs.items():
            if not isinstance(key, str) or not _CONFIG_KEY.match(key):
                raise ValidationError(f"configs.{key}", "is not a valid ConfigMap key")
            if not isinstance(text, str) or not text.strip():
                raise ValidationError(f"configs.{key}", "must be non-empty YAML text")
        if not configs:
            return
        namespace = self.options.device_plugin_namespace
        name = self.options.device_plugin_config_map

        def attempt() -> None:
            current = self._plugin_config_map()
            data = current.data or {}
            if all(data.get(k) == v for k, v in configs.items()):
                return
            body = {"metadata": {"resourceVersion": current.metadata.resource_version},
                    "data": dict(configs)}
            self._call(_Op("patch", "configmaps", namespace=namespace, name=name),
                       self._core.patch_namespaced_config_map, name=name, namespace=namespace,
                       body=body, _content_type=STRATEGIC_MERGE)

        self._with_fresh_reads(attempt, what=f"ConfigMap {self._config_map_ref}")

    def restart_device_plugin(self, node: str, *, expected_gpus: int,
                              timeout_s: float) -> PluginRestart:
        """Delete ``node``'s device-plugin pod(s), wait until their DaemonSet's new pods are
        ready and the node advertises ``expected_gpus`` allocatable ``nvidia.com/gpu``
        (GPUs × replicas of its config)."""
        _positive("timeout_s", timeout_s)
        if expected_gpus < 0:
            raise ValidationError("expected_gpus", "must be ≥ 0")
        deadline = self._monotonic() + timeout_s
        namespace = self.options.device_plugin_namespace
        old = self._plugin_pods(node)
        if not old:
            raise PermanentError(
                f"no device-plugin pod on node {node} (namespace {namespace}, selector "
                f"{self.options.device_plugin_selector!r}): is the NVIDIA device plugin "
                "deployed there?")
        old_uids = {p.metadata.uid for p in old}
        for pod in old:
            with contextlib.suppress(PodNotFoundError):
                self._call(_Op("delete", "pods", namespace=namespace, name=pod.metadata.name),
                           self._core.delete_namespaced_pod, name=pod.metadata.name,
                           namespace=namespace)
        while True:
            current = self._plugin_pods(node)
            fresh = [p for p in current if p.metadata.uid not in old_uids]
            ready = [p for p in fresh if _pod_ready(p)]
            if len(ready) >= len(old) and len(fresh) == len(current):
                break
            if self._monotonic() + self.options.poll_interval_s > deadline:
                state = ", ".join(f"{p.metadata.name} {_describe(p)}" for p in fresh) or \
                    "no new pod yet"
                return PluginRestart(node=node, ready=False,
                                     pods=tuple(p.metadata.name for p in fresh),
                                     reason=f"device plugin on {node} not ready after "
                                            f"{timeout_s:g} s ({state})")
            self._sleep(self.options.poll_interval_s)
        names = tuple(p.metadata.name for p in ready)
        count = self._await_allocatable(node, expected=expected_gpus, deadline=deadline)
        if count != expected_gpus:
            return PluginRestart(
                node=node, ready=False, pods=names, allocatable_gpus=count,
                reason=f"node {node} advertises {count} {GPU_RESOURCE} after {timeout_s:g} s, "
                       f"expected {expected_gpus}")
        return PluginRestart(node=node, ready=True, pods=names, allocatable_gpus=count)

    def _await_allocatable(self, node: str, *, expected: int, deadline: float) -> int | None:
        current = self._call(_Op("get", "nodes", name=node), self._core.read_node, name=node)
        count = _gpu_count(current.status.allocatable if current.status else None)
        if count == expected:
            return count
        events = self._events(_Op("watch", "nodes", name=node), self._core.list_node,
                              field_selector=f"metadata.name={node}",
                              resource_version=current.metadata.resource_version,
                              deadline=deadline)
        with contextlib.closing(events):
            for kind, obj in events:
                if kind == "DELETED":
                    raise NodeNotFoundError(node)
                count = _gpu_count(obj.status.allocatable if obj.status else None)
                if count == expected:
                    return count
        return count

    def _plugin_pods(self, node: str) -> list[k8s.V1Pod]:
        namespace = self.options.device_plugin_namespace
        return self._list(_Op("list", "pods", namespace=namespace), self._core.list_namespaced_pod,
                          namespace=namespace, label_selector=self.options.device_plugin_selector,
                          field_selector=f"spec.nodeName={node}")

    def _plugin_config_map(self) -> k8s.V1ConfigMap:
        namespace = self.options.device_plugin_namespace
        name = self.options.device_plugin_config_map
        return self._call(_Op("get", "configmaps", namespace=namespace, name=name),
                          self._core.read_namespaced_config_map, name=name, namespace=namespace)

    @property
    def _config_map_ref(self) -> str:
        return f"{self.options.device_plugin_namespace}/{self.options.device_plugin_config_map}"

    def _with_fresh_reads(self, attempt: Callable[[], None], *, what: str) -> None:
        """Run read-then-write ``attempt`` again after a 409 conflict (a concurrent writer)."""
        last: ConflictError | None = None
        for n in range(self.options.conflict_retries + 1):
            try:
                attempt()
                return
            except ConflictError as exc:
                log.info("conflict writing %s (attempt %d), reading again: %s", what, n + 1, exc)
                last = exc
        raise TransientError(f"{what} kept changing under us: {self.options.conflict_retries + 1}"
                             f" writes conflicted ({last})",
                             delay=self.options.retry_delay_s) from last

    # --------------------------------------------------------------------------------------
    # Calling the API
    # --------------------------------------------------------------------------------------
    def _call(self, op: _Op, fn: Callable[..., Any], **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self._timeout)
        try:
            return fn(**kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _translate(exc, op=op, retry_delay_s=self.options.retry_delay_s) from exc

    def _list(self, op: _Op, fn: Callable[..., Any], **kwargs: Any) -> list[Any]:
        items: list[Any] = []
        token: str | None = None
        while True:
            page = self._call(op, fn, limit=self.options.page_size, _continue=token, **kwargs)
            items.extend(page.items or ())
            token = page.metadata.var_continue if page.metadata else None
            if not token:
                return items

    def _events(self, op: _Op, fn: Callable[..., Any], *, field_selector: str,
                resource_version: str | None, deadline: float,
                **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """``(type, object)`` watch events until ``deadline``; resumes after the server's
        timeout, and from the current state when the resourceVersion expired (410)."""
        version = resource_version
        while (remaining := deadline - self._monotonic()) > 0:
            seconds = max(1, math.ceil(remaining))
            stream = Watch().stream(
                fn, field_selector=field_selector, resource_version=version,
                timeout_seconds=seconds,
                _request_timeout=(self.options.connect_timeout_s,
                                  seconds + _WATCH_READ_SLACK_S), **kwargs)
            try:
                for event in stream:
                    kind, obj = event["type"], event["object"]
                    if kind in ("BOOKMARK", "ERROR"):
                        continue
                    version = obj.metadata.resource_version or version
                    yield kind, obj
                    if self._monotonic() >= deadline:
                        return
            except ApiException as exc:
                if exc.status != 410:
                    raise _translate(exc, op=op, retry_delay_s=self.options.retry_delay_s) \
                        from exc
                version = None  # expired: start again from the current state
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _translate(exc, op=op, retry_delay_s=self.options.retry_delay_s) from exc
            finally:
                stream.close()


# ==========================================================================================
# The one translation of client errors
# ==========================================================================================
def _translate(exc: BaseException, *, op: _Op, retry_delay_s: float) -> SchedulerError:
    """The project's error for a failed API call ``op`` (raise it ``from exc``)."""
    if not isinstance(exc, ApiException):
        why = innermost_reason(exc)
        return TransientError(f"cannot reach the Kubernetes API server to {op}: {why}",
                              delay=retry_delay_s)
    status = int(exc.status or 0)
    body = _status_body(exc)
    message = str(body.get("message") or exc.reason or "").strip()
    reason = str(body.get("reason") or "")
    causes = [str(c.get("message")) for c in (body.get("details") or {}).get("causes") or ()
              if isinstance(c, Mapping) and c.get("message")]
    detail = message + (f" ({'; '.join(causes)})" if causes else "")
    if status == 0:
        return PermanentError(f"cannot {op}: {detail}")
    if status == 401:
        return PermanentError(
            f"unauthorized: the API server refused the credentials while trying to {op}; "
            "check the kubeconfig or the service-account token")
    if status == 403:
        return PermanentError(f"forbidden: the service account may not {op} "
                              f"(grant it in deploy/k8s/rbac.yaml); API server: {detail}")
    if status == 404:
        if op.resource.startswith("pods") and op.name:
            return PodNotFoundError(f"pod {op.namespace}/{op.name} not found")
        if op.resource == "nodes" and op.name:
            return NodeNotFoundError(op.name)
        return PermanentError(f"not found: {op.target}: {detail}")
    if status == 409:
        if op.verb == "create" and op.resource == "pods":
            return PodExistsError(f"pod {op.namespace}/{op.name} already exists")
        return ConflictError(f"conflict on {op.target}: {detail}", delay=0.0)
    if status in (400, 422):
        field_name = next((str(c.get("field")) for c in (body.get("details") or {}).get(
            "causes") or () if isinstance(c, Mapping) and c.get("field")), op.target)
        return InvalidObjectError(field_name, f"refused by the API server ({reason}): {detail}")
    if status == 429 or status >= 500:
        delay = _retry_after(exc, body)
        what = "too many requests" if status == 429 else f"API server error {status} {reason}"
        return TransientError(f"{what} while trying to {op}: {detail}",
                              delay=retry_delay_s if delay is None else delay)
    if status == 410:
        return TransientError(f"expired while trying to {op}: {detail}", delay=retry_delay_s)
    return PermanentError(f"HTTP {status} {reason} while trying to {op}: {detail}")


def _status_body(exc: ApiException) -> dict[str, Any]:
    """The ``Status`` object the API server sent with an error, or {}."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(exc: ApiException, body: Mapping[str, Any]) -> float | None:
    header = None
    if exc.headers is not None:
        header = exc.headers.get("Retry-After")
    for value in (header, (body.get("details") or {}).get("retryAfterSeconds")):
        try:
            seconds = float(value) if value is not None else None
        except (TypeError, ValueError):
            seconds = None  # an HTTP date: fall back to the default
        if seconds is not None and math.isfinite(seconds) and seconds > 0:
            return seconds
    return None



# ==========================================================================================
# Reading objects
# ==========================================================================================
def _manifest_slice(pod: Mapping[str, Any], *, default_namespace: str
                    ) -> tuple[str, str, str, int, MpsSlice]:
    """``(namespace, name, node, gpu index, slice)`` of a rendered pod (``read_pod``)."""
    p = read_pod(pod, default_namespace=default_namespace)
    return p.namespace, p.name, p.node, p.gpu_index, p.mps_slice







def _label_int(labels: Mapping[str, str], key: str, *, default: int, minimum: int) -> int:
    raw = labels.get(key)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise ValidationError(f"labels.{key}", f"{raw!r} is not a whole number ≥ {minimum}")
    return int(raw)


def _gpu_count(resources: Mapping[str, str] | None) -> int | None:
    raw = (resources or {}).get(GPU_RESOURCE)
    if raw is None:
        return None
    return int(raw) if str(raw).isdigit() else None


def _tokens(product: str) -> set[str]:
    return set(re.split(r"[^A-Z0-9]+", product.upper()))


def _taint_text(taint: k8s.V1Taint) -> str:
    value = f"={taint.value}" if taint.value else ""
    return f"{taint.key}{value}:{taint.effect}"


def _phase(pod: k8s.V1Pod) -> str:
    phase = pod.status.phase if pod.status else None
    return phase if phase in {p.value for p in PodPhase} else PodPhase.PENDING.value


def _pod_ready(pod: k8s.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or ()
    return _phase(pod) == PodPhase.RUNNING.value and any(
        c.type == "Ready" and c.status == "True" for c in conditions)


def _describe(pod: k8s.V1Pod) -> str:
    outcome, _ = _outcome(pod)
    return f"{outcome.phase}: {outcome.reason}" if outcome.reason else outcome.phase


def _outcome(pod: k8s.V1Pod) -> tuple[PodOutcome, bool]:
    """The pod's outcome so far, and whether waiting longer can change it."""
    phase = _phase(pod)
    status = pod.status or k8s.V1PodStatus()
    statuses = [*(status.init_container_statuses or ()), *(status.container_statuses or ())]
    if phase == PodPhase.RUNNING.value:
        return PodOutcome(phase=phase), True
    if phase in (PodPhase.FAILED.value, PodPhase.SUCCEEDED.value):
        reason, message = status.reason or "", status.message or ""
        for cs in statuses:
            term = cs.state.terminated if cs.state else None
            if term is not None and not reason:
                reason, message = term.reason or "", term.message or f"exit code {term.exit_code}"
        if phase == PodPhase.SUCCEEDED.value:
            reason = reason or "Completed"
        return PodOutcome(phase=phase, reason=reason, message=message), True
    for cs in statuses:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in _STUCK_WAITING:
            return PodOutcome(phase=phase, reason=waiting.reason,
                              message=waiting.message or ""), True
    for condition in status.conditions or ():
        if condition.type == "PodScheduled" and condition.status == "False":
            return PodOutcome(phase=phase, reason=condition.reason or "",
                              message=condition.message or ""), False
    return PodOutcome(phase=phase), False


def _stays_on_drain(pod: k8s.V1Pod) -> str:
    """Why a drain leaves ``pod`` where it is ("" when it must be evicted)."""
    meta = pod.metadata
    if MIRROR_ANNOTATION in (meta.annotations or {}):
        return "mirror (static) pod: managed by the kubelet"
    if any(ref.kind == DAEMONSET_KIND for ref in meta.owner_references or ()):
        return "DaemonSet pod: it would be recreated on the node"
    phase = _phase(pod)
    if phase in (PodPhase.SUCCEEDED.value, PodPhase.FAILED.value):
        return f"finished ({phase})"
    return ""


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValidationError(name, "must be a number > 0")
