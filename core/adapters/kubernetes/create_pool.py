"""Pod creates in worker processes, for placement passes the controller's CPU bounds.

Why: a pass creates hundreds of pods; each POST costs the client about a
millisecond of CPU (HTTP framing, the socket's system calls, the answer's
parsing), all under the controller's one interpreter lock, beside its deciding
and its store writes. ``CreatePool`` sends the POSTs from ``processes`` worker
processes (``KubeOptions.create_processes``), each with the official client's
own transport (``kubernetes.client.rest.RESTClientObject``: its TLS, client
certificates, proxy and connection pool, built from the fields of the
adapter's ``Configuration`` that make the transport) and a few threads, so
that several creates are in flight in each.

What crosses to a worker: the request the adapter built with the client's
``ApiClient.param_serialize`` (the URL, the default headers and the auth
header of the moment) and the pod's JSON, serialized once; what comes back:
the answer's status, reason, headers and body, or the reason the request could
not be made. The adapter reads them as it reads its own requests' answers
(``ApiException``, ``translate``), so a worker changes where a POST is sent
from, never what is sent nor how its answer is judged.

Invariants: results are per job and in the jobs' order; a worker never raises
for a job (a failure is that job's result); workers are started with
``spawn`` (no fork of a process that runs threads) and stopped by ``close``.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.rest import RESTClientObject

from core.adapters.errors import innermost_reason

# The ``Configuration`` fields ``RESTClientObject`` builds its transport from.
TRANSPORT_FIELDS = ("host", "verify_ssl", "ssl_ca_cert", "cert_file", "key_file",
                    "ca_cert_data", "assert_hostname", "tls_server_name", "retries",
                    "socket_options", "connection_pool_maxsize", "proxy", "proxy_headers",
                    "no_proxy")

# One create: (url, headers, JSON body, (connect, read) timeout).
Job = tuple[str, Mapping[str, str], bytes, tuple[float, float]]
# Its answer: (status, reason, headers, body, the created object's resourceVersion), or
# (0, why it could not be sent, {}, b"", None). A 2xx answer's body is read in the worker
# (the adapter needs only its resourceVersion) and comes back only when it is not JSON.
Answer = tuple[int, str, dict[str, str], bytes, str | None]

_rest: RESTClientObject | None = None
_threads: ThreadPoolExecutor | None = None


def transport_of(configuration: k8s.Configuration) -> dict[str, Any]:
    """What a worker needs to build the same transport (no credentials: the auth header
    comes with each job, as the adapter computed it)."""
    return {name: getattr(configuration, name, None) for name in TRANSPORT_FIELDS}


def _start_worker(transport: Mapping[str, Any], threads: int) -> None:
    global _rest, _threads
    configuration = k8s.Configuration()
    for name, value in transport.items():
        if value is not None:
            setattr(configuration, name, value)
    configuration.connection_pool_maxsize = max(threads, 1)
    _rest = RESTClientObject(configuration)
    _threads = ThreadPoolExecutor(max_workers=max(threads, 1),
                                  thread_name_prefix="kube-create-worker")


def _post(job: Job) -> Answer:
    url, headers, body, (connect, read) = job
    assert _rest is not None, "the worker was not started"
    try:
        response = _rest.pool_manager.urlopen(
            "POST", url, body=body, headers=dict(headers),
            timeout=urllib3.Timeout(connect=connect, read=read), preload_content=True)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return 0, innermost_reason(exc) or type(exc).__name__, {}, b"", None
    status, data = int(response.status), bytes(response.data or b"")
    version = None
    if 200 <= status <= 299:
        try:
            meta = json.loads(data).get("metadata") or {} if data else {}
            version = str(meta["resourceVersion"]) if meta.get("resourceVersion") else None
            data = b""
        except (ValueError, AttributeError):
            pass  # the adapter reads it (and refuses it) as it reads its own answers
    return status, str(response.reason or ""), dict(response.headers), data, version


def _post_all(jobs: Sequence[Job]) -> list[Answer]:
    assert _threads is not None, "the worker was not started"
    return list(_threads.map(_post, jobs))


def _ready() -> bool:
    return _rest is not None


class CreatePool:
    """``processes`` workers, ``threads`` creates in flight in each."""

    def __init__(self, configuration: k8s.Configuration, *, processes: int,
                 threads: int) -> None:
        self.processes = processes
        self._pool = ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(transport_of(configuration), threads))
        # Start the workers now (an interpreter and the client take a second to load),
        # not in the first pass that needs them.
        self._warming = [self._pool.submit(_ready) for _ in range(processes)]

    def wait_ready(self) -> None:
        """Return once every worker has started."""
        for future in self._warming:
            future.result()

    def post_all(self, jobs: Sequence[Job]) -> list[Answer]:
        """Each job's answer, in order; the jobs are shared out among the workers."""
        if not jobs:
            return []
        n = min(self.processes, len(jobs))
        size = -(-len(jobs) // n)
        parts = [self._pool.submit(_post_all, list(jobs[i:i + size]))
                 for i in range(0, len(jobs), size)]
        return [answer for part in parts for answer in part.result()]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
