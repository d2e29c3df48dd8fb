"""The ``Cluster`` port on Kubernetes: the fleet, binding pods, their phases.

Why: the controller binds placement decisions as pods (SPEC §3.3 step 8) and
reads the fleet before each placement; this is that half of the adapter. The
node operations of a rolling MPS change are in ``node_ops.py``.

What it reads: every node the node selector matches (``nodes.read_node``) and
the console's pods (``pod_selector``) in every namespace, whose annotations
declare the GPU slice they hold (read as the API server's JSON: building the
client's models for thousands of pods would be most of the cost of a read).
What it writes: pods (create, delete) and the node's ``spec.unschedulable``.
For a placement pass (``core.ports.PodBatchCluster``) it creates many pods at
once (``bind_many``, ``options.bind_concurrency`` in flight) and waits for them
on one watch per namespace (``wait_for_pods``), never polling pod by pod.

Invariants: a slice counts on its GPU while its pod is Pending, Running or
Unknown (it holds the GPU), never once it finished; every wait for a pod has a
deadline and returns an outcome with the reason, never hangs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse
from kubernetes.watch.watch import iter_resp_lines

from core.errors import SchedulerError, TransientError, ValidationError
from core.model import MpsSlice, Node
from core.ports import PodNotFoundError, PodPhase, PodWaitResult, ReplicaPod

from .api import _WATCH_READ_SLACK_S, KubeApi, positive
from .create_pool import CreatePool, Job
from .errors import Op, translate
from .nodes import (
    HOLDING_PHASES,
    ManagedPod,
    NodeStatus,
    PodOutcome,
    manifest_slice,
    outcome,
    outcome_of_raw,
    phase,
    read_managed_pod,
    read_node,
)

log = logging.getLogger(__name__)
_MAX_REMEMBERED = 100_000  # resourceVersions of created pods not waited for yet


class ClusterPort(KubeApi):
    """``core.ports.Cluster``: nodes, bind, pod_phase, delete_pod, set_schedulable,
    replica_pods, plus the richer reads (``node_statuses``, ``pods``) and
    ``wait_for_pod``; ``core.ports.PodBatchCluster``: ``bind_many``, ``wait_for_pods``."""

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

    def bind_many(self, pods: Sequence[Mapping[str, Any]]) -> list[Exception | None]:
        """``bind`` each pod, ``options.bind_concurrency`` creates in flight at once; per
        pod None when it was created, else the error (``PodExistsError`` for a duplicate).
        The created pods' resourceVersions are kept for ``wait_for_pods``.

        The request of each namespace (URL, the client's default headers and its auth) is
        built once per call by the client's ``ApiClient.param_serialize``; each pod is
        serialized to JSON once and POSTed through the client's own connection pool
        (``rest_client.pool_manager``: its TLS, proxy, retries, kept-alive connections).
        Building the request pod by pod (``create_namespaced_pod`` or ``call_api``) costs
        the controller more CPU than the API server's answer takes to come."""
        if not pods:
            return []
        requests: dict[str, tuple[str, dict[str, str]]] = {}
        jobs: list[tuple[Mapping[str, Any], tuple[str, dict[str, str]] | None]] = []
        for pod in pods:
            try:
                namespace = manifest_slice(pod, default_namespace=self.options.namespace)[0]
            except (ValidationError, ValueError):
                jobs.append((pod, None))  # refused with its reason by ``_create_quietly``
                continue
            if namespace not in requests:
                requests[namespace] = self._create_request(namespace)
            jobs.append((pod, requests[namespace]))
        if len(jobs) == 1:
            return [self._create_quietly(*jobs[0])]
        if self._create_pool is not None:
            return self._create_in_workers(self._create_pool, jobs)
        return list(self._executor().map(lambda job: self._create_quietly(*job), jobs))

    def _create_in_workers(self, workers: CreatePool,
                           jobs: Sequence[tuple[Mapping[str, Any],
                                                tuple[str, dict[str, str]] | None]]
                           ) -> list[Exception | None]:
        """``bind_many`` through the worker processes (``create_pool``): the same request
        and body as ``_post_pod``, each answer judged as ``_post_pod`` and ``_call`` judge
        it."""
        out: list[Exception | None] = [None] * len(jobs)
        sent: list[tuple[int, str, str]] = []
        posts: list[Job] = []
        for i, (pod, request) in enumerate(jobs):
            try:
                namespace, name, _, _, _ = manifest_slice(
                    pod, default_namespace=self.options.namespace)
            except (ValidationError, ValueError) as exc:
                out[i] = exc
                continue
            assert request is not None
            body = dict(pod)
            body["metadata"] = {**pod["metadata"], "namespace": namespace}
            url, headers = request
            posts.append((url, headers, json.dumps(body, separators=(",", ":")).encode(),
                          self._timeout))
            sent.append((i, namespace, name))
        for (i, namespace, name), (status, reason, headers, data, version) in zip(
                sent, workers.post_all(posts), strict=True):
            op = Op("create", "pods", namespace=namespace, name=name)
            exc: BaseException | None = None
            if status == 0:
                exc = ConnectionError(reason)
            elif not 200 <= status <= 299:
                exc = ApiException(status=status, reason=reason,
                                   body=data.decode("utf-8", "replace") if data else None)
                exc.headers = headers
            if exc is not None:
                out[i] = translate(exc, op=op, retry_delay_s=self.options.retry_delay_s)
                continue
            if data:  # a 2xx answer the worker could not read
                try:
                    version = _resource_version(data)
                except ValueError as err:
                    out[i] = err
                    continue
            if version:
                if len(self._created_versions) > _MAX_REMEMBERED:
                    self._created_versions.clear()
                self._created_versions[(namespace, name)] = version
        return out

    def _create_request(self, namespace: str) -> tuple[str, dict[str, str]]:
        """The URL and headers (defaults, auth) of a pod create in ``namespace``."""
        api = self._core.api_client
        _, url, headers, _, _ = api.param_serialize(
            method="POST", resource_path="/api/v1/namespaces/{namespace}/pods",
            path_params={"namespace": namespace},
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=None, auth_settings=["BearerToken"])
        return url, headers

    def _create_quietly(self, pod: Mapping[str, Any],
                        request: tuple[str, dict[str, str]] | None = None) -> Exception | None:
        try:
            namespace, name, _, _, _ = manifest_slice(
                pod, default_namespace=self.options.namespace)
            body = dict(pod)
            body["metadata"] = {**pod["metadata"], "namespace": namespace}
            response = self._call(Op("create", "pods", namespace=namespace, name=name),
                                  self._post_pod, namespace=namespace, body=body,
                                  request=request)
            version = _resource_version(response.data)
        except (SchedulerError, ValidationError, ValueError) as exc:
            return exc
        if version:
            if len(self._created_versions) > _MAX_REMEMBERED:
                self._created_versions.clear()  # never waited for: forget (a GET recovers)
            self._created_versions[(namespace, name)] = str(version)
        return None

    def _post_pod(self, *, namespace: str, body: Mapping[str, Any], _request_timeout: Any,
                  request: tuple[str, dict[str, str]] | None = None) -> Any:
        """POST the pod as the plain dict it is, serialized once, through the client's
        connection pool with the request ``_create_request`` built: ``create_namespaced_pod``
        would validate the dict into a ``V1Pod`` model and serialize it back, and build the
        created Pod's model from the answer; here only the answer's JSON is read (by the
        caller). A non-2xx answer raises the client's ``ApiException``, as the generated
        method does."""
        url, headers = request if request is not None else self._create_request(namespace)
        connect, read = _request_timeout if isinstance(_request_timeout, tuple) \
            else (_request_timeout, _request_timeout)
        raw = self._core.api_client.rest_client.pool_manager.urlopen(
            "POST", url, body=json.dumps(body, separators=(",", ":")).encode(),
            headers=dict(headers), timeout=urllib3.Timeout(connect=connect, read=read),
            preload_content=True)
        response = RESTResponse(raw)
        response.read()
        if not 200 <= response.status <= 299:
            text = response.data.decode("utf-8", "replace") if response.data else None
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        return response

    def wait_for_pods(self, pods: Sequence[tuple[str, str]], *, timeout_s: float,
                      heartbeat: Callable[[], None] | None = None
                      ) -> dict[tuple[str, str], PodWaitResult]:
        """Wait for many pods with one watch per namespace (from the oldest
        resourceVersion among them) instead of polling each: Running, or the reason it
        cannot run (``outcome``); at the deadline, ``timed_out`` with the last reason seen.
        A pod this adapter did not just create is read first. ``heartbeat`` runs at
        every watch segment (``options.watch_segment_s``) and may raise to stop."""
        positive("timeout_s", timeout_s)
        deadline = self._monotonic() + timeout_s
        beat = heartbeat or (lambda: None)
        done: dict[tuple[str, str], PodWaitResult] = {}
        by_namespace: dict[str, dict[str, PodOutcome]] = {}
        starts: dict[str, int] = {}
        for namespace, name in dict.fromkeys(pods):
            version = self._created_versions.pop((namespace, name), None)
            if version is None or not version.isdigit():
                raw = self._read_raw(namespace, name)
                if raw is None:
                    done[(namespace, name)] = PodWaitResult(
                        phase=PodPhase.UNKNOWN.value, reason="the pod does not exist")
                    continue
                found, settled = outcome_of_raw(raw)
                if settled:
                    done[(namespace, name)] = _result(found)
                    continue
                version = str((raw.get("metadata") or {}).get("resourceVersion") or "0")
            by_namespace.setdefault(namespace, {})[name] = PodOutcome(
                phase=PodPhase.PENDING.value)
            if version.isdigit():
                starts[namespace] = min(starts.get(namespace, int(version)), int(version))
        for namespace, waiting in by_namespace.items():
            self._watch_until_settled(namespace, waiting, done, start=starts.get(namespace, 0),
                                      deadline=deadline, beat=beat)
            for name, found in waiting.items():
                detail = f": {found.reason}: {found.message}" if found.reason else ""
                done[(namespace, name)] = PodWaitResult(
                    phase=found.phase, timed_out=True,
                    reason=f"not Running after {timeout_s:g} s{detail}")
        return done

    def _watch_until_settled(self, namespace: str, waiting: dict[str, PodOutcome],
                             done: dict[tuple[str, str], PodWaitResult], *, start: int,
                             deadline: float, beat: Callable[[], None]) -> None:
        """Watch ``namespace``'s managed pods from ``start`` until every pod in ``waiting``
        settled (moved to ``done``) or the deadline; the rest stay in ``waiting``."""
        op = Op("watch", "pods", namespace=namespace)
        version = start - 1 if start > 0 else 0
        while waiting and (remaining := deadline - self._monotonic()) > 0:
            seconds = max(1, min(self.options.watch_segment_s, math.ceil(remaining)))
            stream = self._call(op, self._core.list_namespaced_pod, namespace=namespace,
                                label_selector=self.options.pod_selector or None, watch=True,
                                resource_version=str(version) if version else None,
                                timeout_seconds=seconds, _preload_content=False,
                                _request_timeout=(self.options.connect_timeout_s,
                                                  seconds + _WATCH_READ_SLACK_S))
            try:
                for line in iter_resp_lines(stream):
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") != 410:
                            raise TransientError(f"the watch of pods in {namespace} failed: "
                                                 f"{obj.get('message')}",
                                                 delay=self.options.retry_delay_s)
                        version = self._reread(namespace, waiting, done)  # expired: resync
                        break
                    meta = obj.get("metadata") or {}
                    rv = str(meta.get("resourceVersion") or "")
                    if rv.isdigit():
                        version = max(version, int(rv))
                    name = meta.get("name")
                    if name not in waiting:
                        continue
                    if kind == "DELETED":
                        del waiting[name]
                        done[(namespace, name)] = PodWaitResult(
                            phase=PodPhase.UNKNOWN.value,
                            reason="the pod was deleted while it was awaited")
                        continue
                    found, settled = outcome_of_raw(obj)
                    if settled:
                        del waiting[name]
                        done[(namespace, name)] = _result(found)
                    else:
                        waiting[name] = found
                    if not waiting:
                        break
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise translate(exc, op=op, retry_delay_s=self.options.retry_delay_s) \
                    from exc
            finally:
                stream.close()  # left early, the rest of the stream must not be reused
                stream.release_conn()
            beat()

    def _reread(self, namespace: str, waiting: dict[str, PodOutcome],
                done: dict[tuple[str, str], PodWaitResult]) -> int:
        """After a 410 (the watch window moved on): read each awaited pod; the newest
        resourceVersion seen, to watch on from."""
        newest = 0
        for name in list(waiting):
            raw = self._read_raw(namespace, name)
            if raw is None:
                del waiting[name]
                done[(namespace, name)] = PodWaitResult(phase=PodPhase.UNKNOWN.value,
                                                        reason="the pod does not exist")
                continue
            rv = str((raw.get("metadata") or {}).get("resourceVersion") or "")
            newest = max(newest, int(rv) if rv.isdigit() else 0)
            found, settled = outcome_of_raw(raw)
            if settled:
                del waiting[name]
                done[(namespace, name)] = _result(found)
        return newest

    def _read_raw(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self._call(Op("get", "pods", namespace=namespace, name=name),
                                  self._core.read_namespaced_pod, name=name,
                                  namespace=namespace, _preload_content=False)
        except PodNotFoundError:
            return None
        data: dict[str, Any] = json.loads(response.data)
        return data

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
        items = self._list_raw(Op("list", "pods", all_namespaces=True),
                               self._core.list_pod_for_all_namespaces,
                               label_selector=self.options.pod_selector or None)
        out = []
        for raw in items:
            try:
                out.append(read_managed_pod(raw, default_namespace=self.options.namespace))
            except ValidationError as exc:
                meta = raw.get("metadata") or {}
                log.debug("pod %s/%s holds no slice the console can read: %s",
                          meta.get("namespace"), meta.get("name"), exc)
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


def _resource_version(data: bytes | None) -> str | None:
    """``metadata.resourceVersion`` of the JSON object ``data`` (None when it has none)."""
    if not data:
        return None
    meta = json.loads(data).get("metadata") or {}
    version = meta.get("resourceVersion")
    return str(version) if version else None


def _result(found: PodOutcome) -> PodWaitResult:
    why = f"{found.reason}: {found.message}" if found.message else found.reason
    return PodWaitResult(phase=found.phase, reason="" if found.running else why or found.phase)
