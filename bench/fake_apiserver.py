"""A lean fake Kubernetes API server for fleets of thousands of nodes and pods.

Why: ``tests/integration/fake_kube.py`` is the faithful fake for the adapter's
behaviour (evictions, PodDisruptionBudgets, the device plugin, RBAC), but it
scans every object on every scheduling step and every event on every watch
wake-up, so at 5,000 GPUs the fake itself would be what a benchmark measures.
This one keeps only what placing pods needs, with the same JSON shapes, and
costs O(1) per write and O(new events) per watch:

- ``/api/v1/nodes`` list (``limit``/``continue``, ``labelSelector``);
- ``/api/v1/pods`` and ``/api/v1/namespaces/{ns}/pods`` list and watch
  (``labelSelector`` of ``key=value`` terms, ``fieldSelector`` on
  ``metadata.name``, ``resourceVersion``, ``timeoutSeconds``), create;
- ``/api/v1/namespaces/{ns}/pods/{name}`` get and delete.

Real shapes: ``NodeList``/``PodList`` with ``metadata.resourceVersion`` and
``continue``; objects with uid, creationTimestamp and a ``resourceVersion``
from one counter; errors as ``Status`` objects (409 ``AlreadyExists``, 404
``NotFound``, 400 ``BadRequest``); watches as chunked newline-delimited
``{"type", "object"}`` events, and an ERROR event 410 ``Expired`` for a
resourceVersion older than the event window kept.

Every request waits ``service_s`` (default 3 ms) before it is answered, as a
local kube-apiserver with etcd takes a few ms per write: the fake is never
faster than the real thing. A created pod is Pending; ``start_delay_s`` later
it is bound to the node its ``kubernetes.io/hostname`` node selector names and
Running, or stays Pending with the scheduler's ``Unschedulable`` condition when
that node does not exist or has no ``nvidia.com/gpu`` allocatable left (a
per-node counter, as kube-scheduler's NodeResourcesFit checks).

``python -m bench.fake_apiserver --nodes 625 --gpus-per-node 8`` serves such a
fleet and prints its URL on the first line of stdout (the benchmark starts it
as a separate process, so that its CPU does not compete with the controller's
interpreter lock).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import heapq
import itertools
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

GPU = "nvidia.com/gpu"
HOSTNAME = "kubernetes.io/hostname"
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
A100_PRODUCT = "NVIDIA-A100-SXM4-40GB"
PRODUCTS = {"H100": (H100_PRODUCT, 81559), "A100": (A100_PRODUCT, 40960)}
MAX_EVENTS = 200_000  # events kept for watches; older resourceVersions are 410 Expired


_stamp_cache: list[Any] = [-1, ""]


def _now() -> str:
    """The current second as the API server writes timestamps (formatted once a second:
    a pod's creation and start stamp seven of them)."""
    second = int(time.time())
    if second != _stamp_cache[0]:
        _stamp_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _stamp_cache[0] = second
    return str(_stamp_cache[1])


def _dumps(obj: Any) -> bytes:
    """Compact JSON, as kube-apiserver writes it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _labels_match(selector: str) -> Callable[[Mapping[str, str]], bool]:
    terms: list[tuple[str, str | None, bool]] = []
    for part in (p.strip() for p in selector.split(",") if p.strip()):
        if "!=" in part:
            k, v = part.split("!=", 1)
            terms.append((k.strip(), v.strip(), False))
        elif "=" in part:
            k, v = part.replace("==", "=").split("=", 1)
            terms.append((k.strip(), v.strip(), True))
        else:
            terms.append((part, None, True))

    def match(labels: Mapping[str, str]) -> bool:
        for key, value, equal in terms:
            if value is None:
                if key not in labels:
                    return False
            elif (labels.get(key) == value) != equal:
                return False
        return True
    return match


def _fields_match(selector: str) -> Callable[[Mapping[str, Any]], bool]:
    names: list[str] = []
    for part in (p.strip() for p in selector.split(",") if p.strip()):
        key, _, value = part.replace("==", "=").partition("=")
        if key.strip() != "metadata.name":
            raise ValueError(f"field label not supported: {key.strip()}")
        names.append(value.strip())
    return lambda obj: all(obj["metadata"]["name"] == n for n in names)


class _Event:
    __slots__ = ("labels", "line", "namespace", "obj", "rv")

    def __init__(self, rv: int, kind: str, obj: dict[str, Any],
                 encoded: bytes | None = None) -> None:
        self.rv = rv
        self.namespace = obj["metadata"].get("namespace", "")
        self.labels = obj["metadata"].get("labels") or {}
        self.obj = obj
        # The same bytes as ``_dumps({"type": kind, "object": obj})``, reusing the
        # object's encoding when the answer to the request already made it.
        body = encoded if encoded is not None else _dumps(obj)
        self.line = b'{"type":"' + kind.encode() + b'","object":' + body + b"}\n"


class FakeApiServer:
    """Nodes and pods, their lifecycle, and the HTTP server in front of them."""

    def __init__(self, *, service_s: float = 0.003, start_delay_s: float = 0.02) -> None:
        self.service_s = service_s
        self.start_delay_s = start_delay_s
        self._cond = threading.Condition(threading.RLock())
        self._rv = 1000
        self._nodes: dict[str, dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._gpu_free: dict[str, int] = {}
        self._events: list[_Event] = []
        self._event_rvs: list[int] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.requests = 0

    # -- lifetime --------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._threads = [threading.Thread(target=server.serve_forever, daemon=True,
                                          kwargs={"poll_interval": 0.05}),
                         threading.Thread(target=self._run_timers, daemon=True)]
        for t in self._threads:
            t.start()
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
            self._server.server_close()

    # -- seeding ---------------------------------------------------------------------------
    def add_node(self, name: str, *, gpu_type: str, count: int, replicas: int = 1) -> None:
        """A GPU node as GPU feature discovery and the device plugin publish it."""
        product, memory = PRODUCTS[gpu_type]
        labels = {HOSTNAME: name, "kubernetes.io/os": "linux",
                  "nvidia.com/gpu.present": "true",
                  "nvidia.com/gpu.product": f"{product}-SHARED" if replicas > 1 else product,
                  "nvidia.com/gpu.count": str(count), "nvidia.com/gpu.memory": str(memory),
                  "nvidia.com/gpu.replicas": str(replicas),
                  "nvidia.com/gpu.sharing-strategy": "mps" if replicas > 1 else "none",
                  "nvidia.com/mps.capable": str(replicas > 1).lower(),
                  "nvidia.com/device-plugin.config": f"mps-{replicas}" if replicas > 1
                  else "exclusive"}
        resources = {"cpu": "64", "memory": "528157124Ki", "pods": "110",
                     GPU: str(count * replicas)}
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"podCIDR": "10.244.0.0/24"},
                "status": {"capacity": dict(resources), "allocatable": dict(resources),
                           "conditions": [{"type": "Ready", "status": "True",
                                           "reason": "KubeletReady",
                                           "message": "kubelet is posting ready status",
                                           "lastHeartbeatTime": _now(),
                                           "lastTransitionTime": _now()}]}}
        with self._cond:
            self._stamp(node)
            self._nodes[name] = node
            self._gpu_free[name] = count * replicas

    def pods(self) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(json.dumps(p)) for p in self._pods.values()]

    # -- requests --------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        self.requests += 1
        parts = urlsplit(path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        seg = [unquote(s) for s in parts.path.strip("/").split("/") if s]
        if seg[:2] != ["api", "v1"]:
            return 404, status_object(404, "NotFound", "the server could not find the "
                                                       "requested resource")
        rest = seg[2:]
        namespace = ""
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        resource = rest[0] if rest else ""
        name = rest[1] if len(rest) > 1 else ""
        watching = query.get("watch") in ("true", "1")
        try:
            if resource == "nodes" and method == "GET" and not name and not watching:
                return self._list_nodes(query)
            if resource == "pods" and method == "GET" and not name and watching:
                return 200, self._watch(namespace, query)
            if resource == "pods" and method == "GET" and not name:
                return self._list_pods(namespace, query)
            if resource == "pods" and method == "GET" and namespace:
                return self._get_pod(namespace, name)
            if resource == "pods" and method == "POST" and namespace and not name:
                return self._create_pod(namespace, json.loads(body or b"null"))
            if resource == "pods" and method == "DELETE" and namespace and name:
                return self._delete_pod(namespace, name)
        except ValueError as exc:
            return 400, status_object(400, "BadRequest", str(exc))
        return 405, status_object(405, "MethodNotAllowed",
                                  f"the server does not allow {method} on {parts.path}")

    def _page(self, items: list[dict[str, Any]], query: Mapping[str, str], kind: str
              ) -> tuple[int, Any]:
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - start - limit
        return _encoded(200, {"kind": kind, "apiVersion": "v1", "metadata": meta,
                              "items": items[start:start + limit]})

    def _list_nodes(self, query: Mapping[str, str]) -> tuple[int, Any]:
        match = _labels_match(query.get("labelSelector", ""))
        with self._cond:
            items = [n for _, n in sorted(self._nodes.items())
                     if match(n["metadata"]["labels"])]
            return self._page(items, query, "NodeList")

    def _list_pods(self, namespace: str, query: Mapping[str, str]) -> tuple[int, Any]:
        match = _labels_match(query.get("labelSelector", ""))
        fields = _fields_match(query.get("fieldSelector", ""))
        with self._cond:
            items = [p for (ns, _), p in sorted(self._pods.items())
                     if (not namespace or ns == namespace)
                     and match(p["metadata"].get("labels") or {}) and fields(p)]
            return self._page(items, query, "PodList")

    def _get_pod(self, namespace: str, name: str) -> tuple[int, Any]:
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None:
                return 404, status_object(404, "NotFound", f'pods "{name}" not found')
            return _encoded(200, pod)

    def _create_pod(self, namespace: str, pod: Any) -> tuple[int, Any]:
        if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod":
            return 400, status_object(400, "BadRequest", "the body is not a Pod")
        meta = pod.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return 422, status_object(422, "Invalid",
                                      'Pod "" is invalid: metadata.name: Required value')
        if meta.get("namespace", namespace) != namespace:
            return 400, status_object(400, "BadRequest", "the namespace of the provided "
                                      "object does not match the namespace sent on the request")
        meta["namespace"] = namespace
        pod.setdefault("spec", {})
        pod["status"] = {"phase": "Pending", "qosClass": "Guaranteed"}
        with self._cond:
            if (namespace, name) in self._pods:
                return 409, status_object(409, "AlreadyExists",
                                          f'pods "{name}" already exists')
            self._stamp(pod)
            self._pods[(namespace, name)] = pod
            code, body = _encoded(201, pod)
            self._event("ADDED", pod, body)
            self._later(self.start_delay_s, lambda: self._schedule(namespace, name))
            return code, body

    def _delete_pod(self, namespace: str, name: str) -> tuple[int, Any]:
        with self._cond:
            pod = self._pods.pop((namespace, name), None)
            if pod is None:
                return 404, status_object(404, "NotFound", f'pods "{name}" not found')
            node = pod["spec"].get("nodeName")
            if node and pod["status"].get("phase") in ("Pending", "Running"):
                self._gpu_free[node] += _gpus_requested(pod)
            self._stamp(pod)
            code, body = _encoded(200, pod)
            self._event("DELETED", pod, body)
            return code, body

    def _schedule(self, namespace: str, name: str) -> None:
        pod = self._pods.get((namespace, name))
        if pod is None or pod["spec"].get("nodeName"):
            return
        wanted = (pod["spec"].get("nodeSelector") or {}).get(HOSTNAME)
        asked = _gpus_requested(pod)
        free = self._gpu_free.get(wanted or "")
        if free is None or free < asked:
            why = ("node(s) didn't match Pod's node affinity/selector" if free is None
                   else f"Insufficient {GPU}")
            pod["status"]["conditions"] = [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "lastTransitionTime": _now(),
                "message": f"0/{len(self._nodes)} nodes are available: 1 {why}."}]
        else:
            self._gpu_free[wanted or ""] = free - asked
            container = (pod["spec"].get("containers") or [{}])[0]
            pod["spec"]["nodeName"] = wanted
            pod["status"].update(
                phase="Running", podIP="10.244.0.17", hostIP="10.0.0.10", startTime=_now(),
                conditions=[{"type": t, "status": "True", "lastTransitionTime": _now()}
                            for t in ("PodScheduled", "Initialized", "Ready")],
                containerStatuses=[{"name": container.get("name", "main"),
                                    "image": container.get("image", ""), "ready": True,
                                    "started": True, "restartCount": 0,
                                    "imageID": f"{container.get('image', '')}@sha256:{'0' * 64}",
                                    "state": {"running": {"startedAt": _now()}}}])
        self._stamp(pod)
        self._event("MODIFIED", pod)

    def _watch(self, namespace: str, query: Mapping[str, str]) -> Iterator[bytes]:
        match = _labels_match(query.get("labelSelector", ""))
        fields = _fields_match(query.get("fieldSelector", ""))
        timeout = min(float(query.get("timeoutSeconds") or 60), 300.0)
        start = query.get("resourceVersion") or "0"
        deadline = time.monotonic() + timeout

        def wanted(e: _Event) -> bool:
            return (not namespace or e.namespace == namespace) and match(e.labels) \
                and fields(e.obj)

        def events() -> Iterator[bytes]:
            with self._cond:
                if start == "0":
                    initial = [_dumps({"type": "ADDED", "object": p}) + b"\n"
                               for (ns, _), p in sorted(self._pods.items())
                               if (not namespace or ns == namespace)
                               and match(p["metadata"].get("labels") or {}) and fields(p)]
                    cursor = self._rv
                else:
                    cursor = int(start)
                    initial = []
                    if self._event_rvs and cursor < self._event_rvs[0] - 1:
                        expired = status_object(410, "Expired",
                                                f"too old resource version: {cursor} "
                                                f"({self._rv})")
                        yield _dumps({"type": "ERROR", "object": expired}) + b"\n"
                        return
            yield from initial
            while True:
                with self._cond:
                    while not self._stopping and self._rv <= cursor and \
                            (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                    first = bisect.bisect_right(self._event_rvs, cursor)
                    batch = [e.line for e in self._events[first:] if wanted(e)]
                    cursor = self._rv
                    done = self._stopping or time.monotonic() >= deadline
                yield from batch
                if done:
                    return
        return events()

    # -- state (under the lock) ------------------------------------------------------------
    def _stamp(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.UUID(int=random.getrandbits(128), version=4)))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(self._rv)

    def _event(self, kind: str, obj: dict[str, Any], encoded: bytes | None = None) -> None:
        self._events.append(_Event(self._rv, kind, obj, encoded))
        self._event_rvs.append(self._rv)
        if len(self._events) > MAX_EVENTS:
            drop = len(self._events) - MAX_EVENTS // 2
            del self._events[:drop], self._event_rvs[:drop]
        self._cond.notify_all()

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


def _encoded(code: int, body: Any) -> tuple[int, bytes]:
    """Serialized under the lock: the timer thread changes live objects."""
    return code, _dumps(body)


def _gpus_requested(pod: Mapping[str, Any]) -> int:
    total = 0
    for c in pod["spec"].get("containers") or ():
        res = c.get("resources") or {}
        total += int((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU)
                     or 0)
    return total


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with kept-alive connections, read and written lean: the request line and
    headers split by hand (not through ``email``'s parser) and each answer written in
    one piece, so that the fake's own CPU per request stays well under the time it
    waits (``service_s``): it shares the machine's cores with the controller it serves."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stall, as no real server has

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        line = self.rfile.readline(65537)
        parts = line.split()
        if len(parts) != 3:
            self.close_connection = True
            return
        method, path = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        headers: dict[str, str] = {}
        while True:
            raw = self.rfile.readline(65537)
            if raw in (b"\r\n", b"\n", b""):
                break
            key, _, value = raw.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        self.close_connection = headers.get("connection", "").lower() == "close"
        fake: FakeApiServer = self.server.fake  # type: ignore[attr-defined]
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if fake.service_s > 0:
            time.sleep(fake.service_s)
        code, reply = fake.handle(method, path, body)
        try:
            if isinstance(reply, Iterator):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                for event in reply:
                    self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
            data = reply if isinstance(reply, bytes) else _dumps(reply)
            self.wfile.write(f"HTTP/1.1 {code} {_phrase(code)}\r\nContent-Type: "
                             f"application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                             .encode() + data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def seed_fleet(fake: FakeApiServer, *, nodes: int, gpus_per_node: int, replicas: int,
               h100_every: int = 3) -> None:
    """``nodes`` nodes of ``gpus_per_node`` GPUs: every ``h100_every``-th H100, else A100."""
    for n in range(nodes):
        gpu_type = "H100" if n % h100_every == 0 else "A100"
        fake.add_node(f"{gpu_type.lower()}-{n:05d}", gpu_type=gpu_type, count=gpus_per_node,
                      replicas=replicas)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=625)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=3.0)
    parser.add_argument("--start-delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    fake = FakeApiServer(service_s=args.service_ms / 1e3, start_delay_s=args.start_delay_ms / 1e3)
    seed_fleet(fake, nodes=args.nodes, gpus_per_node=args.gpus_per_node, replicas=args.replicas)
    print(fake.start(args.port), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()  # runs until its parent closes stdin
    fake.stop()


if __name__ == "__main__":
    main()
