"""A fake Kubernetes API server on loopback, for the Kubernetes adapter's tests.

It speaks HTTP/1.1 JSON the way kube-apiserver does, for exactly the
endpoints the Kubernetes adapter (``core.adapters.kubernetes``) uses:

- ``/api/v1/nodes`` list/watch, ``/api/v1/nodes/{name}`` get/patch;
- ``/api/v1/pods`` list/watch (all namespaces), ``/api/v1/namespaces/{ns}/pods``
  list/watch/create, ``…/pods/{name}`` get/delete, ``…/pods/{name}/eviction``
  create (a policy/v1 ``Eviction``);
- ``/api/v1/namespaces/{ns}/configmaps/{name}`` get/patch.

Real shapes: ``NodeList``/``PodList`` with ``metadata.resourceVersion`` and
``continue`` (``limit``), objects with uid, creationTimestamp and a
``resourceVersion`` from one counter that increments on every write, errors as
``Status`` objects (``kind: Status``, ``code``, ``reason``, ``message``,
``details``), watches as chunked newline-delimited ``{"type", "object"}``
events (``ADDED``/``MODIFIED``/``DELETED``) honouring ``resourceVersion``,
``timeoutSeconds``, ``fieldSelector`` and ``labelSelector`` (an ERROR event
410 ``Expired`` after ``expire_next_watch``). PATCH takes strategic-merge and
merge patches; a ``metadata.resourceVersion`` in the patch is a precondition
(409 ``Conflict`` when stale); a created pod that exists is 409
``AlreadyExists``; a missing object is 404 ``NotFound``; a granted eviction is
201 with a ``Success`` Status.

Behaviour, simulated in time (delays configurable):
- scheduling: a created pod is Pending, then bound to its node-selector's node and
  Running (or Failed, or stuck in a waiting reason, as scripted per pod name). It
  stays Pending with the scheduler's ``Unschedulable`` message while that node does
  not exist, is cordoned, has a ``NoSchedule``/``NoExecute`` taint the pod does not
  tolerate, or has no ``nvidia.com/gpu`` of its allocatable left for it; it is
  tried again whenever a node changes or a pod goes;
- termination: an evicted or deleted pod gets a ``deletionTimestamp`` and is gone
  after a delay;
- PodDisruptionBudgets (``add_pdb``, policy/v1 ``minAvailable``/``maxUnavailable``
  over a label selector): the eviction subresource answers 429
  ``TooManyRequests`` (cause ``DisruptionBudget``) when evicting the pod would take
  the healthy pods below the budget, computed as the disruption controller does
  (healthy: Ready and not terminating); ``block_eviction`` scripts refusals;
- the device plugin: a DaemonSet pod per GPU node. Deleting it terminates it; once
  it is gone the kubelet withdraws the node's ``nvidia.com/gpu``, the DaemonSet
  creates a new pod (Pending, ``ContainerCreating``) that becomes Ready after a
  delay, and a little later the node's allocatable becomes GPUs × the replicas of
  the config its ``nvidia.com/device-plugin.config`` label selects in the
  device-plugin ConfigMap, with GFD's labels (``nvidia.com/gpu.replicas``,
  sharing strategy, ``-SHARED`` product) updated; a config the ConfigMap lacks
  makes the new pod crash-loop.

Switches for tests: ``forbid`` (403 for a verb/resource), ``fail_next``
(401/422/429/500/503, with ``Retry-After`` when asked), ``touch_before_next_patch`` (a concurrent
writer, so the next patch carries a stale resourceVersion), ``enforce`` (an
RBAC authorizer over Role/ClusterRole manifests). Every request is logged as a
``Call`` (method, path, verb, resource, subresource, namespace, name, code).

``python -m tests.integration.fake_kube --port 8001 --kubeconfig var/fake-kubeconfig``
serves a demo fleet (4 H100 + 8 A100 nodes) for pointing the console at it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import heapq
import itertools
import json
import math
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

DEVICE_PLUGIN_NAMESPACE = "nvidia-device-plugin"
DEVICE_PLUGIN_CONFIG_MAP = "nvidia-device-plugin-configs"
DEVICE_PLUGIN_LABELS = {"app.kubernetes.io/name": "nvidia-device-plugin",
                        "app.kubernetes.io/instance": "nvdp"}
CONFIG_LABEL = "nvidia.com/device-plugin.config"
GPU = "nvidia.com/gpu"
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
A100_PRODUCT = "NVIDIA-A100-SXM4-40GB"
DEFAULT_USER = "system:serviceaccount:gpu-scheduler:gpu-scheduler-controller"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
_PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json")
_KINDS = {"nodes": "Node", "pods": "Pod", "configmaps": "ConfigMap"}
_ROUTES = {
    # (resource, subresource, namespaced?, has name?) → verbs served
    ("nodes", "", False, False): {"list", "watch"},
    ("nodes", "", False, True): {"get", "patch"},
    ("pods", "", False, False): {"list", "watch"},
    ("pods", "", True, False): {"list", "watch", "create"},
    ("pods", "", True, True): {"get", "delete"},
    ("pods", "eviction", True, True): {"create"},
    ("configmaps", "", True, True): {"get", "patch"},
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, *, message: str,
                  details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``meta/v1`` Status as kube-apiserver sends it with an error."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}
    if details:
        body["details"] = dict(details)
    return body


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request as the API server's RequestInfo and audit log see it."""

    method: str
    path: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def resource_path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(slots=True)
class PodScript:
    """How a created pod ends: Running, Failed with a reason, or stuck waiting."""

    phase: str = "Running"
    reason: str = ""
    message: str = ""
    waiting: bool = False  # Pending with the container waiting for ``reason``


@dataclass(slots=True, kw_only=True)
class _Failure:
    verb: str
    resource: str
    code: int
    times: int
    retry_after: int | None


@dataclass(slots=True, kw_only=True)
class _Budget:
    pdb: str
    times: float  # refusals left (math.inf: until lifted)
    retry_after: int | None


# ==========================================================================================
# RBAC: the authorizer's rule matching, over Role/ClusterRole manifests
# ==========================================================================================
@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One PolicyRule as it applies to a subject: cluster-wide or in one namespace."""

    namespace: str | None
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    resource_names: frozenset[str]
    source: str

    def allows(self, call: Call) -> bool:
        if self.namespace is not None and call.namespace != self.namespace:
            return False
        if not ({"", "*"} & self.api_groups):
            return False
        if not ({call.resource_path, "*"} & self.resources):
            return False
        if not ({call.verb, "*"} & self.verbs):
            return False
        return not self.resource_names or call.name in self.resource_names


def grants_for(objects: Iterable[Mapping[str, Any]], *, service_account: str,
               namespace: str) -> list[Grant]:
    """The rules bound to ``namespace/service_account`` by the (Cluster)RoleBindings."""
    objects = list(objects)
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o.get("kind") in ("Role", "ClusterRole")}
    grants: list[Grant] = []
    for binding in objects:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                   and s.get("namespace") == namespace for s in binding.get("subjects") or ()):
            continue
        ref = binding["roleRef"]
        where = binding["metadata"].get("namespace") \
            if binding["kind"] == "RoleBinding" else None
        role = roles.get((ref["kind"], where if ref["kind"] == "Role" else None, ref["name"]))
        if role is None:
            raise LookupError(f"{binding['kind']} {binding['metadata']['name']} refers to a "
                              f"missing {ref['kind']} {ref['name']}")
        for i, rule in enumerate(role.get("rules") or ()):
            grants.append(Grant(
                namespace=where, api_groups=frozenset(rule.get("apiGroups") or ()),
                resources=frozenset(rule.get("resources") or ()),
                verbs=frozenset(rule.get("verbs") or ()),
                resource_names=frozenset(rule.get("resourceNames") or ()),
                source=f"{ref['kind']}/{ref['name']} rule {i}"))
    return grants


# ==========================================================================================
# Selectors
# ==========================================================================================
_SELECTOR_PART = re.compile(r",(?![^()]*\))")


def label_matcher(selector: str) -> Callable[[Mapping[str, str]], bool]:
    """A label selector (``a=b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (…)``)."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for part in (p.strip() for p in _SELECTOR_PART.split(selector) if p.strip()):
        if m := re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)", part):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*(\S*)", part):
            key, op, value = m[1], m[2], m[3]
            if op == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m := re.fullmatch(r"!\s*(\S+)", part):
            tests.append(lambda labels, k=m[1]: k not in labels)
        elif re.fullmatch(r"[^\s!=(),]+", part):
            tests.append(lambda labels, k=part: k in labels)
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return lambda labels: all(t(labels) for t in tests)


_FIELDS: dict[str, dict[str, Callable[[Mapping[str, Any]], str]]] = {
    "nodes": {"metadata.name": lambda o: o["metadata"]["name"],
              "spec.unschedulable": lambda o: str(bool(o["spec"].get("unschedulable"))).lower()},
    "pods": {"metadata.name": lambda o: o["metadata"]["name"],
             "metadata.namespace": lambda o: o["metadata"]["namespace"],
             "spec.nodeName": lambda o: o["spec"].get("nodeName", ""),
             "status.phase": lambda o: o["status"].get("phase", "")},
}


def field_matcher(resource: str, selector: str) -> Callable[[Mapping[str, Any]], bool]:
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in (p.strip() for p in selector.split(",") if p.strip()):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise ValueError(f"invalid field selector: {part!r}")
        getter = _FIELDS.get(resource, {}).get(m[1])
        if getter is None:
            raise ValueError(f'field label not supported: {m[1]}')
        if m[2] == "!=":
            tests.append(lambda o, g=getter, v=m[3]: g(o) != v)
        else:
            tests.append(lambda o, g=getter, v=m[3]: g(o) == v)
    return lambda obj: all(t(obj) for t in tests)


# ==========================================================================================
# The fake API server
# ==========================================================================================
class _Reply:
    def __init__(self, code: int, body: Any, *,
                 headers: Mapping[str, str] | None = None) -> None:
        self.code = code
        self.body = body
        self.headers = dict(headers or {})


class _Stream:
    def __init__(self, events: Iterator[bytes]) -> None:
        self.code = 200
        self.events = events


class FakeKube:
    """The cluster state, its simulated behaviour and the HTTP server in front of it."""

    def __init__(
        self,
        *,
        pod_start_delay_s: float = 0.15,
        termination_delay_s: float = 0.05,
        plugin_restart_delay_s: float = 0.25,
        gpu_registration_delay_s: float = 0.2,
        plugin_recreate_delay_s: float = 0.02,
        user: str = DEFAULT_USER,
    ) -> None:
        self.pod_start_delay_s = pod_start_delay_s
        self.termination_delay_s = termination_delay_s
        self.plugin_recreate_delay_s = plugin_recreate_delay_s
        self.plugin_restart_delay_s = plugin_restart_delay_s
        self.gpu_registration_delay_s = gpu_registration_delay_s
        self.user = user
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._rv = 100
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource, ns, name)
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, obj)
        self._calls: list[Call] = []
        self._forbidden: set[tuple[str, str, str | None]] = set()
        self._failures: list[_Failure] = []
        self._budgets: dict[tuple[str, str], _Budget] = {}
        self._scripts: dict[str, PodScript] = {}
        self._touch: set[tuple[str, str, str]] = set()
        self._expire_next_watch = False
        self._products: dict[str, tuple[str, int]] = {}  # node → (base product, GPU count)
        self._unscheduled: set[tuple[str, str]] = set()  # pods the scheduler left Pending
        self._grants: list[Grant] | None = None
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # --------------------------------------------------------------------------------------
    # Lifetime
    # --------------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1 (``port`` 0: a free one); returns the base URL."""
        self._server = _Server(("127.0.0.1", port), self)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                             name="fake-kube-http", daemon=True),
            threading.Thread(target=self._run_timers, name="fake-kube-timers", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeKube:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------------
    # Seeding the cluster
    # --------------------------------------------------------------------------------------
    def add_config_map(self, namespace: str, name: str, *, data: Mapping[str, str]) -> None:
        with self._cond:
            self._put("configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace},
                "data": dict(data)}, event="ADDED")

    def add_node(
        self,
        name: str,
        *,
        product: str | None = H100_PRODUCT,
        memory_mib: int = 81559,
        count: int = 1,
        config: str | None = None,
        ready: bool = True,
        unschedulable: bool = False,
        taints: Iterable[Mapping[str, str]] = (),
        labels: Mapping[str, str] | None = None,
        device_plugin: bool = True,
    ) -> None:
        """A node as GFD and the device plugin publish it (``product=None``: no GPUs)."""
        node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64"}
        if product is not None:
            node_labels.update({
                "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(count),
                "nvidia.com/gpu.memory": str(memory_mib), "nvidia.com/mps.capable": "false",
                "nvidia.com/gpu.family": "hopper" if "H100" in product else "ampere",
            })
            if config is not None:
                node_labels[CONFIG_LABEL] = config
        node_labels.update(labels or {})
        taint_list = [dict(t) for t in taints]
        resources = {"cpu": "64", "memory": "528157124Ki", "pods": "110",
                     "ephemeral-storage": "1793582Mi"}
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": node_labels, "annotations": {
                "node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": "10.244.0.0/24", "taints": taint_list},
            "status": {
                "capacity": dict(resources), "allocatable": dict(resources),
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "reason":
                     "KubeletHasSufficientMemory", "lastHeartbeatTime": _now(),
                     "lastTransitionTime": _now()},
                    {"type": "Ready", "status": "True" if ready else "False",
                     "reason": "KubeletReady" if ready else "KubeletNotReady",
                     "message": "kubelet is posting ready status" if ready else
                     "container runtime network not ready", "lastHeartbeatTime": _now(),
                     "lastTransitionTime": _now()},
                ],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.10"},
                              {"type": "Hostname", "address": name}],
            },
        }
        if unschedulable:
            node["spec"]["unschedulable"] = True
        with self._cond:
            _sync_unschedulable_taint(node)
            if product is not None:
                self._products[name] = (product, count)
            self._put("nodes", node, event="ADDED")
            if product is not None and device_plugin:
                self._start_plugin(name)

    def add_pdb(self, namespace: str, name: str, *, match_labels: Mapping[str, str],
                min_available: int | None = None, max_unavailable: int | None = None) -> None:
        """A policy/v1 PodDisruptionBudget over the pods ``match_labels`` selects; the
        eviction subresource enforces it (``minAvailable`` or ``maxUnavailable``)."""
        if (min_available is None) == (max_unavailable is None):
            raise ValueError("give exactly one of min_available and max_unavailable")
        spec: dict[str, Any] = {"selector": {"matchLabels": dict(match_labels)}}
        if min_available is not None:
            spec["minAvailable"] = min_available
        else:
            spec["maxUnavailable"] = max_unavailable
        with self._cond:
            self._put("poddisruptionbudgets", {
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": namespace, "generation": 1},
                "spec": spec}, event="ADDED")

    def add_pod(
        self,
        namespace: str,
        name: str,
        *,
        node: str,
        owner: str | None = "ReplicaSet",
        mirror: bool = False,
        phase: str = "Running",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """A pod already running on ``node`` (owned by ``owner``'s kind; mirror: static)."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": dict(labels or {}),
                                "annotations": dict(annotations or {})}
        if mirror:
            meta["annotations"]["kubernetes.io/config.mirror"] = secrets.token_hex(16)
            meta["ownerReferences"] = [_owner(api_version="v1", kind="Node", name=node)]
        elif owner is not None:
            meta["ownerReferences"] = [_owner(api_version="apps/v1", kind=owner,
                                              name=name.rsplit("-", 1)[0])]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": {"nodeName": node, "containers": [
                   {"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
               "status": {}}
        if phase == "Running":
            _set_running(pod)
        else:
            pod["status"]["phase"] = phase
        with self._cond:
            self._put("pods", pod, event="ADDED")

    # --------------------------------------------------------------------------------------
    # Switches
    # --------------------------------------------------------------------------------------
    def forbid(self, verb: str, resource: str, *, namespace: str | None = None) -> None:
        """Answer 403 to ``verb`` on ``resource`` (``pods/eviction`` for a subresource)."""
        with self._cond:
            self._forbidden.add((verb, resource, namespace))

    def enforce(self, grants: Iterable[Grant] | None) -> None:
        """Authorize every request against ``grants`` (None: allow everything)."""
        with self._cond:
            self._grants = None if grants is None else list(grants)

    def fail_next(self, verb: str, resource: str, *, code: int, times: int = 1,
                  retry_after: int | None = None) -> None:
        """Answer the next ``times`` matching requests with ``code`` (500, 503, 429…)."""
        with self._cond:
            self._failures.append(_Failure(verb=verb, resource=resource, code=code, times=times,
                                           retry_after=retry_after))

    def block_eviction(self, namespace: str, name: str, *, times: float = math.inf,
                       pdb: str = "web-pdb", retry_after: int | None = None) -> None:
        """Refuse the next ``times`` evictions of the pod (429), as its PDB would."""
        with self._cond:
            self._budgets[(namespace, name)] = _Budget(pdb=pdb, times=times,
                                                       retry_after=retry_after)

    def script_pod(self, name: str, script: PodScript) -> None:
        """How the pod named ``name`` will end once created."""
        with self._cond:
            self._scripts[name] = script

    def expire_next_watch(self) -> None:
        """Answer the next watch from a resourceVersion with an ERROR event 410 ``Expired``,
        as the API server does once etcd compacted that version away."""
        with self._cond:
            self._expire_next_watch = True

    def touch_before_next_patch(self, resource: str, name: str, *, namespace: str = "") -> None:
        """A concurrent writer changes the object just before the next PATCH arrives."""
        with self._cond:
            self._touch.add((resource, namespace, name))

    # --------------------------------------------------------------------------------------
    # Inspection
    # --------------------------------------------------------------------------------------
    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def node(self, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._objects[("nodes", "", name)])

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get(("pods", namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for (r, _, _), o in self._objects.items()
                    if r == "pods" and o["spec"].get("nodeName") == node]

    def pdb(self, namespace: str, name: str) -> dict[str, Any]:
        """The PodDisruptionBudget with the status the disruption controller would write."""
        with self._lock:
            obj = copy.deepcopy(self._objects[("poddisruptionbudgets", namespace, name)])
            obj["status"] = self._pdb_status(obj)
            return obj

    def config_map(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._objects[("configmaps", namespace, name)])

    # --------------------------------------------------------------------------------------
    # Request handling
    # --------------------------------------------------------------------------------------
    def handle(self, *, method: str, path: str, headers: Mapping[str, str],
               body: bytes) -> _Reply | _Stream:
        parts = urlsplit(path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        segments = [unquote(s) for s in parts.path.strip("/").split("/") if s]
        call = _request_info(method=method, path=parts.path, segments=segments, query=query)
        try:
            reply = self._serve(call=call, query=query, headers=headers, body=body)
        except Exception as exc:  # the fake must answer, never drop the connection
            reply = _Reply(500, status_object(500, "InternalError",
                                              message=f"fake API server error: {exc!r}"))
        with self._lock:
            self._calls.append(Call(method=method, path=parts.path, verb=call.verb,
                                    resource=call.resource, subresource=call.subresource,
                                    namespace=call.namespace, name=call.name, code=reply.code,
                                    query=query))
        return reply

    def _serve(self, *, call: Call, query: Mapping[str, str], headers: Mapping[str, str],
               body: bytes) -> _Reply | _Stream:
        route = (call.resource, call.subresource, bool(call.namespace), bool(call.name))
        if route not in _ROUTES:
            return _Reply(404, status_object(
                404, "NotFound", message="the server could not find the requested resource"))
        if call.verb not in _ROUTES[route]:
            return _Reply(405, status_object(
                405, "MethodNotAllowed", message="the server does not allow this method on the "
                                                 f"requested resource ({call.verb})"))
        with self._cond:
            denied = self._denied(call)
            if denied is not None:
                return denied
            for failure in self._failures:
                if failure.times > 0 and failure.verb == call.verb and \
                        failure.resource == call.resource_path:
                    failure.times -= 1
                    return _failure_reply(failure)
        try:
            payload = json.loads(body) if body else None
        except ValueError as exc:
            return _Reply(400, status_object(400, "BadRequest",
                                             message=f"invalid JSON body: {exc}"))
        try:
            match call.verb:
                case "list":
                    return self._list(call, query)
                case "watch":
                    return self._watch(call, query)
                case "get":
                    return self._get(call)
                case "create" if call.subresource == "eviction":
                    return self._evict(call, payload)
                case "create":
                    return self._create_pod(call, payload)
                case "delete":
                    return self._delete_pod(call)
                case "patch":
                    return self._patch(call=call, content_type=headers.get("Content-Type", ""),
                                       patch=payload)
        except ValueError as exc:  # a selector the server cannot parse
            return _Reply(400, status_object(400, "BadRequest", message=str(exc)))
        raise AssertionError(call.verb)

    def _denied(self, call: Call) -> _Reply | None:
        forbidden = any(v == call.verb and r == call.resource_path and ns in (None, call.namespace)
                        for v, r, ns in self._forbidden)
        if not forbidden and self._grants is not None:
            forbidden = not any(g.allows(call) for g in self._grants)
        if not forbidden:
            return None
        scope = f'in the namespace "{call.namespace}"' if call.namespace else \
            "at the cluster scope"
        subject = f'{call.resource_path} "{call.name}"' if call.name else call.resource_path
        message = (f'{subject} is forbidden: User "{self.user}" cannot {call.verb} resource '
                   f'"{call.resource_path}" in API group "" {scope}')
        return _Reply(403, status_object(403, "Forbidden", message=message, details={
            "name": call.name, "kind": call.resource} if call.name else {"kind": call.resource}))

    # --- reads ----------------------------------------------------------------------------
    def _matching(self, call: Call, query: Mapping[str, str]
                  ) -> Callable[[str, Mapping[str, Any]], bool]:
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(call.resource, query.get("fieldSelector", ""))

        def matches(resource: str, obj: Mapping[str, Any]) -> bool:
            return (resource == call.resource
                    and (not call.namespace or obj["metadata"].get("namespace") == call.namespace)
                    and labels(obj["metadata"].get("labels") or {}) and fields(obj))
        return matches

    def _list(self, call: Call, query: Mapping[str, str]) -> _Reply:
        matches = self._matching(call, query)
        with self._lock:
            items = [copy.deepcopy(o) for (r, _, _), o in sorted(self._objects.items())
                     if matches(r, o)]
            rv = str(self._rv)
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": rv}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - start - limit
        for item in page:
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return _Reply(200, {"kind": f"{_KINDS[call.resource]}List", "apiVersion": "v1",
                            "metadata": meta, "items": page})

    def _get(self, call: Call) -> _Reply:
        with self._lock:
            obj = self._objects.get((call.resource, call.namespace, call.name))
            if obj is None:
                return _not_found(call)
            return _Reply(200, copy.deepcopy(obj))

    def _watch(self, call: Call, query: Mapping[str, str]) -> _Stream:
        matches = self._matching(call, query)
        timeout = min(float(query.get("timeoutSeconds") or 60), 60.0)
        start = query.get("resourceVersion")

        def events() -> Iterator[bytes]:
            deadline = time.monotonic() + timeout
            with self._cond:
                if start in (None, "", "0"):
                    initial = [("ADDED", copy.deepcopy(o))
                               for (r, _, _), o in sorted(self._objects.items()) if matches(r, o)]
                    cursor = self._rv
                elif self._expire_next_watch:
                    self._expire_next_watch = False
                    expired = status_object(
                        410, "Expired", message=f"too old resource version: {start} ({self._rv})")
                    initial, cursor = [("ERROR", expired)], -1
                else:
                    initial, cursor = [], int(start)
            if cursor < 0:
                yield _event_line(*initial[0])
                return
            for kind, obj in initial:
                yield _event_line(kind, obj)
            while True:
                with self._cond:
                    while not self._stopping and self._rv <= cursor and \
                            (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                    batch = [(t, copy.deepcopy(o)) for rv, r, t, o in self._events
                             if rv > cursor and matches(r, o)]
                    cursor = self._rv
                    done = self._stopping or time.monotonic() >= deadline
                for kind, obj in batch:
                    yield _event_line(kind, obj)
                if done:
                    return
        return _Stream(events())

    # --- writes ---------------------------------------------------------------------------
    def _create_pod(self, call: Call, pod: Any) -> _Reply:
        if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod":
            return _Reply(400, status_object(400, "BadRequest", message="the body is not a Pod"))
        meta = pod.setdefault("metadata", {})
        if meta.get("namespace", call.namespace) != call.namespace:
            return _Reply(400, status_object(
                400, "BadRequest", message="the namespace of the provided object does not match "
                                           "the namespace sent on the request"))
        name = meta.get("name")
        if not name:
            return _Reply(422, status_object(
                422, "Invalid", message='Pod "" is invalid: metadata.name: Required value',
                details={"kind": "Pod", "causes": [{"reason": "FieldValueRequired",
                                                    "message": "Required value",
                                                    "field": "metadata.name"}]}))
        meta["namespace"] = call.namespace
        pod.setdefault("spec", {})
        pod["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
        with self._cond:
            if ("pods", call.namespace, name) in self._objects:
                return _Reply(409, status_object(409, "AlreadyExists",
                                                 message=f'pods "{name}" already exists',
                                                 details={"name": name, "kind": "pods"}))
            created = self._put("pods", pod, event="ADDED")
            self._later(self.pod_start_delay_s, lambda: self._schedule(call.namespace, name))
            return _Reply(201, copy.deepcopy(created))

    def _schedule(self, namespace: str, name: str) -> None:
        """What kube-scheduler does for one pending pod: pick the node its selector names
        when that node passes the filters (schedulable, taints tolerated, enough
        ``nvidia.com/gpu`` allocatable), else leave it Pending with the scheduler's
        ``Unschedulable`` message; it is tried again whenever a node or a pod changes."""
        pod = self._objects.get(("pods", namespace, name))
        if pod is None or pod["metadata"].get("deletionTimestamp") or \
                pod["spec"].get("nodeName"):
            return
        wanted = (pod["spec"].get("nodeSelector") or {}).get("kubernetes.io/hostname")
        nodes = [o for (r, _, _), o in self._objects.items() if r == "nodes"]
        node = next((n for n in nodes if wanted in (None, n["metadata"]["labels"].get(
            "kubernetes.io/hostname"))), None)
        why = "" if node is None else self._unfit(pod, node)
        if node is None or why:
            reasons = [f"1 {why}"] if why else []
            others = len(nodes) - len(reasons)
            if others:
                reasons.append(f"{others} node(s) didn't match Pod's node affinity/selector")
            message = (f"0/{len(nodes)} nodes are available: {', '.join(sorted(reasons))}. "
                       f"preemption: 0/{len(nodes)} nodes are available: {len(nodes)} "
                       "Preemption is not helpful for scheduling.")
            conditions = pod["status"].get("conditions") or [{}]
            if conditions[0].get("message") != message:
                pod["status"]["conditions"] = [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "lastTransitionTime": _now(), "message": message}]
                self._put("pods", pod, event="MODIFIED")
            self._unscheduled.add((namespace, name))
            return
        self._unscheduled.discard((namespace, name))
        pod["spec"]["nodeName"] = node["metadata"]["name"]
        script = self._scripts.get(name, PodScript())
        if script.phase == "Running" and not script.waiting:
            _set_running(pod)
        elif script.waiting:
            pod["status"].update(phase="Pending", conditions=[
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": _now()}],
                containerStatuses=[_container_status(pod, waiting=(script.reason,
                                                                   script.message))])
        else:
            pod["status"].update(phase=script.phase, reason=script.reason,
                                 message=script.message, startTime=_now())
        self._put("pods", pod, event="MODIFIED")

    def _unfit(self, pod: Mapping[str, Any], node: Mapping[str, Any]) -> str:
        """The scheduler's reason why ``node`` cannot take ``pod`` ("" when it can)."""
        spec = node.get("spec") or {}
        if spec.get("unschedulable"):
            return "node(s) were unschedulable"
        asked = _gpus_requested(pod)
        tolerated = {t.get("key") for t in pod["spec"].get("tolerations") or ()}
        if asked:
            tolerated.add(GPU)  # the ExtendedResourceToleration admission plugin adds it
        for taint in spec.get("taints") or ():
            if taint.get("effect") in ("NoSchedule", "NoExecute") and \
                    taint.get("key") not in tolerated:
                value = f": {taint['value']}" if taint.get("value") else ""
                return f"node(s) had untolerated taint {{{taint['key']}{value}}}"
        if asked:
            name = node["metadata"]["name"]
            held = sum(_gpus_requested(o) for (r, _, _), o in self._objects.items()
                       if r == "pods" and o["spec"].get("nodeName") == name
                       and o["status"].get("phase") not in ("Succeeded", "Failed"))
            allocatable = int((node["status"].get("allocatable") or {}).get(GPU, "0"))
            if held + asked > allocatable:
                return f"Insufficient {GPU}"
        return ""

    def _retry_unscheduled(self) -> None:
        for namespace, name in sorted(self._unscheduled):
            self._schedule(namespace, name)

    def _delete_pod(self, call: Call) -> _Reply:
        with self._cond:
            pod = self._objects.get(("pods", call.namespace, call.name))
            if pod is None:
                return _not_found(call)
            if _is_plugin_pod(pod):
                node = pod["spec"]["nodeName"]
                return _Reply(200, self._terminate(
                    call.namespace, call.name, then=lambda: self._plugin_gone(node)))
            return _Reply(200, self._terminate(call.namespace, call.name))

    def _evict(self, call: Call, eviction: Any) -> _Reply:
        if not isinstance(eviction, dict) or eviction.get("kind") != "Eviction" or \
                eviction.get("apiVersion") not in ("policy/v1", "policy/v1beta1"):
            return _Reply(400, status_object(400, "BadRequest",
                                             message="the body is not an Eviction"))
        if (eviction.get("metadata") or {}).get("name") != call.name:
            return _Reply(400, status_object(
                400, "BadRequest", message="name in URL does not match name in Eviction object"))
        with self._cond:
            if ("pods", call.namespace, call.name) not in self._objects:
                return _not_found(call)
            budget = self._budgets.get((call.namespace, call.name))
            if budget is not None and budget.times > 0:
                budget.times -= 1
                return _budget_refusal(budget.pdb, desired=2, current=2,
                                       retry_after=budget.retry_after)
            refused = self._pdb_refusal(self._objects[("pods", call.namespace, call.name)])
            if refused is not None:
                return refused
            self._terminate(call.namespace, call.name)
            return _Reply(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Success", "code": 201})

    def _patch(self, *, call: Call, content_type: str, patch: Any) -> _Reply:
        media = content_type.split(";")[0].strip()
        if media not in _PATCH_TYPES:
            return _Reply(415, status_object(415, "UnsupportedMediaType",
                                             message=f"the body of the request was in an unknown "
                                             f"format - accepted media types include: "
                                             f"{', '.join(_PATCH_TYPES)} (got {media!r})"))
        if not isinstance(patch, dict):
            return _Reply(400, status_object(400, "BadRequest", message="a merge patch must be an "
                                                                "object"))
        key = (call.resource, call.namespace, call.name)
        with self._cond:
            obj = self._objects.get(key)
            if obj is None:
                return _not_found(call)
            if key in self._touch:  # someone else writes first
                self._touch.discard(key)
                obj["metadata"].setdefault("annotations", {})["fake/touched"] = str(self._rv)
                obj = self._put(call.resource, obj, event="MODIFIED")
            wanted = (patch.get("metadata") or {}).pop("resourceVersion", None)
            if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
                return _Reply(409, status_object(
                    409, "Conflict",
                    message=f'Operation cannot be fulfilled on {call.resource} "{call.name}": the '
                    "object has been modified; please apply your changes to the latest version and "
                    "try again", details={"name": call.name, "kind": call.resource}))
            updated = _merge(copy.deepcopy(obj), patch)
            if call.resource == "nodes":
                _sync_unschedulable_taint(updated)
            return _Reply(200, copy.deepcopy(self._put(call.resource, updated,
                                                       event="MODIFIED")))

    def _pdb_refusal(self, pod: Mapping[str, Any]) -> _Reply | None:
        """The eviction subresource's PodDisruptionBudget check (policy/v1): a pod that is
        Pending, finished or already terminating is evicted regardless; a pod under more
        than one PDB is refused (201 with a Failure Status of code 500, as the real
        handler answers); a Ready pod only while the budget allows a disruption; one that
        is not Ready while the application is not below its budget."""
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or \
                pod["status"].get("phase") in ("Pending", "Succeeded", "Failed"):
            return None
        pdbs = [o for (r, ns, _), o in sorted(self._objects.items())
                if r == "poddisruptionbudgets" and ns == meta["namespace"]
                and label_matcher(_selector_text(o))(meta.get("labels") or {})]
        if len(pdbs) > 1:  # kube-apiserver answers 201 with a Failure Status (code 500)
            return _Reply(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "code": 500, "message": (
                                    "This pod has more than one PodDisruptionBudget, which "
                                    "the eviction subresource does not support.")})
        if not pdbs:
            return None
        status = self._pdb_status(pdbs[0])
        desired, current = status["desiredHealthy"], status["currentHealthy"]
        if status["disruptionsAllowed"] > 0 or (not _healthy(pod) and 0 < desired <= current):
            return None
        return _budget_refusal(pdbs[0]["metadata"]["name"], desired=desired, current=current)

    def _pdb_status(self, pdb: Mapping[str, Any]) -> dict[str, Any]:
        """What the disruption controller computes for ``pdb`` (at once, not eventually)."""
        matches = label_matcher(_selector_text(pdb))
        pods = [o for (r, ns, _), o in self._objects.items()
                if r == "pods" and ns == pdb["metadata"]["namespace"]
                and matches(o["metadata"].get("labels") or {})
                and o["status"].get("phase") not in ("Succeeded", "Failed")]
        expected = len(pods)
        spec = pdb["spec"]
        desired = int(spec["minAvailable"]) if "minAvailable" in spec else \
            max(0, expected - int(spec["maxUnavailable"]))
        current = sum(1 for o in pods if _healthy(o))
        allowed = max(0, current - desired) if expected > 0 else 0
        return {"observedGeneration": pdb["metadata"].get("generation", 1),
                "disruptionsAllowed": allowed, "currentHealthy": current,
                "desiredHealthy": desired, "expectedPods": expected,
                "conditions": [{
                    "type": "DisruptionAllowed", "status": str(allowed > 0),
                    "reason": "SufficientPods" if allowed > 0 else "InsufficientPods",
                    "message": "", "observedGeneration": pdb["metadata"].get("generation", 1),
                    "lastTransitionTime": _now()}]}

    # --- state changes (under the lock) ---------------------------------------------------
    def _put(self, resource: str, obj: dict[str, Any], *, event: str) -> dict[str, Any]:
        self._rv += 1
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(self._rv)
        self._objects[(resource, meta.get("namespace", ""), meta["name"])] = obj
        self._events.append((self._rv, resource, event, copy.deepcopy(obj)))
        if resource == "nodes" and self._unscheduled:
            self._later(0.0, self._retry_unscheduled)
        self._cond.notify_all()
        return obj

    def _remove_pod(self, namespace: str, name: str) -> None:
        obj = self._objects.pop(("pods", namespace, name), None)
        if obj is not None:
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._events.append((self._rv, "pods", "DELETED", copy.deepcopy(obj)))
            self._unscheduled.discard((namespace, name))
            if self._unscheduled:
                self._later(0.0, self._retry_unscheduled)
            self._cond.notify_all()

    def _terminate(self, namespace: str, name: str, *,
                   then: Callable[[], None] | None = None) -> dict[str, Any]:
        """Graceful deletion: ``deletionTimestamp`` now, gone ``termination_delay_s`` later
        (then ``then`` runs)."""
        pod = self._objects[("pods", namespace, name)]

        def remove() -> None:
            self._remove_pod(namespace, name)
            if then is not None:
                then()
        if self.termination_delay_s <= 0:
            remove()
            return copy.deepcopy(pod)
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = 30
        self._put("pods", pod, event="MODIFIED")
        self._later(self.termination_delay_s, remove)
        return copy.deepcopy(pod)

    def _replicas(self, config: str | None) -> tuple[int, str] | None:
        """(replicas, sharing strategy) of a named config; None when the ConfigMap lacks it."""
        if config is None:
            return 1, "none"
        cm = self._objects.get(("configmaps", DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP))
        text = ((cm or {}).get("data") or {}).get(config)
        if text is None:
            return None
        sharing = (yaml.safe_load(text) or {}).get("sharing") or {}
        for strategy, label in (("mps", "mps"), ("timeSlicing", "time-slicing")):
            resources = (sharing.get(strategy) or {}).get("resources") or []
            if resources:
                return int(resources[0]["replicas"]), label
        return 1, "none"

    def _set_gpus(self, node_name: str, amount: int) -> None:
        node = self._objects[("nodes", "", node_name)]
        node["status"]["capacity"][GPU] = str(amount) if amount else \
            node["status"]["capacity"].get(GPU, "0")
        node["status"]["allocatable"][GPU] = str(amount)
        self._put("nodes", node, event="MODIFIED")

    def _plugin_gone(self, node_name: str) -> None:
        """The device-plugin pod of ``node_name`` is gone: the kubelet withdraws the
        resource it registered, and the DaemonSet controller creates a new pod."""
        if ("nodes", "", node_name) not in self._objects:
            return
        self._set_gpus(node_name, 0)
        self._later(self.plugin_recreate_delay_s, lambda: self._start_plugin(
            node_name, ready_after_s=self.plugin_restart_delay_s,
            register_after_s=self.gpu_registration_delay_s))

    def _start_plugin(self, node_name: str, *, ready_after_s: float = 0.0,
                      register_after_s: float = 0.0) -> None:
        """The DaemonSet's pod on ``node_name`` is created (Pending, ContainerCreating),
        becomes Ready ``ready_after_s`` later, and ``register_after_s`` after that the
        kubelet publishes the GPUs it registered (and GFD relabels the node). A config
        the ConfigMap lacks makes the plugin crash-loop instead."""
        node = self._objects.get(("nodes", "", node_name))
        if node is None or self._stopping:
            return
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"nvdp-nvidia-device-plugin-{secrets.token_hex(3)[:5]}",
            "namespace": DEVICE_PLUGIN_NAMESPACE,
            "labels": {**DEVICE_PLUGIN_LABELS, "pod-template-generation": "1"},
            "ownerReferences": [_owner(api_version="apps/v1", kind="DaemonSet",
                                       name="nvdp-nvidia-device-plugin")]},
            "spec": {"nodeName": node_name, "containers": [
                {"name": "nvidia-device-plugin-ctr",
                 "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"}]},
            "status": {"phase": "Pending", "qosClass": "BestEffort", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": _now()}]}}
        pod["status"]["containerStatuses"] = [_container_status(
            pod, waiting=("ContainerCreating", ""))]
        name = pod["metadata"]["name"]
        if ready_after_s <= 0:
            self._plugin_started(node_name, pod, register_after_s=register_after_s)
            return
        self._put("pods", pod, event="ADDED")
        self._later(ready_after_s, lambda: self._plugin_started(
            node_name, self._objects.get(("pods", DEVICE_PLUGIN_NAMESPACE, name)),
            register_after_s=register_after_s))

    def _plugin_started(self, node_name: str, pod: dict[str, Any] | None, *,
                        register_after_s: float) -> None:
        node = self._objects.get(("nodes", "", node_name))
        if node is None or pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        event = "MODIFIED" if "uid" in pod["metadata"] else "ADDED"
        found = self._replicas(node["metadata"]["labels"].get(CONFIG_LABEL))
        _set_running(pod)
        if found is None:  # the plugin cannot load its config: it crash-loops
            pod["status"]["conditions"][-1].update(status="False", reason="ContainersNotReady")
            pod["status"]["containerStatuses"] = [_container_status(pod, waiting=(
                "CrashLoopBackOff", "back-off 10s restarting failed container"))]
            self._put("pods", pod, event=event)
            return
        replicas, strategy = found
        self._put("pods", pod, event=event)
        if register_after_s > 0:
            self._later(register_after_s,
                        lambda: self._register(node_name, replicas=replicas, strategy=strategy))
        else:
            self._register(node_name, replicas=replicas, strategy=strategy)

    def _register(self, node_name: str, *, replicas: int, strategy: str) -> None:
        node = self._objects.get(("nodes", "", node_name))
        if node is None:
            return
        product, count = self._products[node_name]
        labels = node["metadata"]["labels"]
        labels["nvidia.com/gpu.replicas"] = str(replicas)
        labels["nvidia.com/gpu.sharing-strategy"] = strategy
        labels["nvidia.com/mps.capable"] = str(strategy == "mps").lower()
        labels["nvidia.com/gpu.product"] = f"{product}-SHARED" if replicas > 1 else product
        self._set_gpus(node_name, count * replicas)

    # --- timers ---------------------------------------------------------------------------
    def _later(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), action))
        self._cond.notify_all()

    def _run_timers(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._timers and self._timers[0][0] <= now:
                    _, _, action = heapq.heappop(self._timers)
                    action()
                    continue
                self._cond.wait(self._timers[0][0] - now if self._timers else 0.5)


# ==========================================================================================
# HTTP
# ==========================================================================================
class _Server(ThreadingHTTPServer):
    daemon_threads = False  # joined in server_close
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeKube) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, *, opened: bool) -> None:
        with self._open_lock:
            (self._open.add if opened else self._open.discard)(conn)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections, so they end."""
        with self._open_lock:
            for conn in list(self._open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK hold every response back ~40 ms, as no real API
    # server does.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, opened=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request is in FakeKube.calls

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.fake.handle(method=self.command, path=self.path,
                                        headers=dict(self.headers.items()), body=body)
        try:
            if isinstance(reply, _Stream):
                self._stream(reply)
                return
            data = json.dumps(reply.body).encode()
            self.send_response(reply.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _stream(self, reply: _Stream) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for line in reply.events:
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(reply.events, "close", None)
            if close is not None:
                close()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch


# ==========================================================================================
# Helpers
# ==========================================================================================
def _request_info(*, method: str, path: str, segments: list[str],
                  query: Mapping[str, str]) -> Call:
    rest = segments[2:] if segments[:2] == ["api", "v1"] else ["?"]
    namespace = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) == 3 else ("?" if len(rest) > 3 else "")
    watching = query.get("watch") in ("true", "1")
    verb = {"GET": "get" if name else ("watch" if watching else "list"), "POST": "create",
            "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
    return Call(method=method, path=path, verb=verb, resource=resource, subresource=sub,
                namespace=namespace, name=name, code=0)


def _not_found(call: Call) -> _Reply:
    return _Reply(404, status_object(404, "NotFound",
                                     message=f'{call.resource} "{call.name}" not found',
                                     details={"name": call.name, "kind": call.resource}))


def _failure_reply(failure: _Failure) -> _Reply:
    reasons = {401: ("Unauthorized", "Unauthorized"),
               422: ("Invalid", "the object is invalid"),
               429: ("TooManyRequests", "the server has received too many requests and has "
                                        "asked us to try again later"),
               500: ("InternalError", "Internal error occurred: etcdserver: request timed out"),
               503: ("ServiceUnavailable", "the server is currently unable to handle the "
                                           "request")}
    reason, message = reasons.get(failure.code, ("InternalError", "injected failure"))
    headers = {}
    details: dict[str, Any] = {}
    if failure.retry_after is not None:
        headers["Retry-After"] = str(failure.retry_after)
        details["retryAfterSeconds"] = failure.retry_after
    return _Reply(failure.code,
                  status_object(failure.code, reason, message=message, details=details),
                  headers=headers)


def _event_line(kind: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def _merge(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): what strategic merge does for maps and scalars."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def _sync_unschedulable_taint(node: dict[str, Any]) -> None:
    """The node lifecycle controller mirrors spec.unschedulable as a NoSchedule taint."""
    spec = node.setdefault("spec", {})
    taints = [t for t in spec.get("taints") or [] if t.get("key") != UNSCHEDULABLE_TAINT]
    if spec.get("unschedulable"):
        taints.append({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": _now()})
    spec["taints"] = taints


def _selector_text(pdb: Mapping[str, Any]) -> str:
    labels = (pdb["spec"].get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _owner(*, api_version: str, kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": str(uuid.uuid4()),
            "controller": True, "blockOwnerDeletion": True}


def _gpus_requested(pod: Mapping[str, Any]) -> int:
    """``nvidia.com/gpu`` the pod's containers ask for (limits, as extended resources)."""
    total = 0
    for container in pod["spec"].get("containers") or ():
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU) or \
            (resources.get("requests") or {}).get(GPU) or "0"
        total += int(amount)
    return total


def _healthy(pod: Mapping[str, Any]) -> bool:
    """Counted healthy by the disruption controller: Ready and not being deleted (the
    eviction handler has already let a terminating pod go without a budget check)."""
    return not pod["metadata"].get("deletionTimestamp") and \
        pod["status"].get("phase") == "Running" and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod["status"].get("conditions") or ())


def _budget_refusal(pdb: str, *, desired: int, current: int,
                    retry_after: int | None = None) -> _Reply:
    """429 as the eviction subresource answers when a PodDisruptionBudget allows no
    disruption now."""
    details: dict[str, Any] = {"causes": [{
        "reason": "DisruptionBudget",
        "message": f"The disruption budget {pdb} needs {desired} healthy pods and has "
                   f"{current} currently"}]}
    headers = {}
    if retry_after:
        details["retryAfterSeconds"] = retry_after
        headers["Retry-After"] = str(retry_after)
    return _Reply(429, status_object(
        429, "TooManyRequests",
        message="Cannot evict pod as it would violate the pod's disruption budget.",
        details=details), headers=headers)


def _is_plugin_pod(pod: Mapping[str, Any]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return pod["metadata"].get("namespace") == DEVICE_PLUGIN_NAMESPACE and all(
        labels.get(k) == v for k, v in DEVICE_PLUGIN_LABELS.items())


def _container_status(pod: Mapping[str, Any], *,
                      waiting: tuple[str, str] | None = None) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    state = {"waiting": {"reason": waiting[0], "message": waiting[1]}} if waiting else \
        {"running": {"startedAt": _now()}}
    return {"name": container["name"], "image": container["image"],
            "imageID": "" if waiting else f"{container['image']}@sha256:{'0' * 64}",
            "ready": waiting is None, "started": waiting is None, "restartCount": 0,
            "state": state}


def _set_running(pod: dict[str, Any]) -> None:
    pod["status"].update(
        phase="Running", podIP="10.244.0.17", startTime=_now(), hostIP="10.0.0.10",
        conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": _now()},
                    {"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
        containerStatuses=[_container_status(pod)])


# ==========================================================================================
# Dev server: a demo fleet to point the console at
# ==========================================================================================
def demo_fleet(fake: FakeKube) -> None:
    """The spec's default fleet shape: 4 H100 nodes (exclusive) + 8 A100 nodes (mps-2)."""
    fake.add_config_map(DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_CONFIG_MAP, data={
        "exclusive": "version: v1\nflags:\n  migStrategy: none\n",
        "mps-2": "version: v1\nflags:\n  migStrategy: none\nsharing:\n  mps:\n"
                 "    renameByDefault: false\n    failRequestsGreaterThanOne: true\n"
                 "    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n"})
    for i in range(4):
        fake.add_node(f"h100-{i}", product=H100_PRODUCT, memory_mib=81559, config="exclusive")
    for i in range(8):
        fake.add_node(f"a100-{i}", product=A100_PRODUCT, memory_mib=40960, config="mps-2")


def kubeconfig(url: str) -> dict[str, Any]:
    """A kubeconfig pointing at the fake (plain HTTP on loopback, a dummy token)."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": "default"}}]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--kubeconfig", type=Path, default=Path("var/fake-kubeconfig"))
    args = parser.parse_args(argv)
    fake = FakeKube(pod_start_delay_s=2.0, plugin_restart_delay_s=3.0,
                    termination_delay_s=1.0)
    url = fake.start(args.port)
    demo_fleet(fake)
    args.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    args.kubeconfig.write_text(yaml.safe_dump(kubeconfig(url)), encoding="utf-8")
    print(f"fake Kubernetes API at {url}; KUBECONFIG={args.kubeconfig}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
