"""Calling the Kubernetes API: the client, paging, watches, conflict retries.

Why: the Cluster port (``cluster.py``) and the node operations (``node_ops.py``)
make their calls through this one base, so that every call carries the RBAC
verb and resource it needs (an ``Op``) and every failure goes through the one
``translate``.

Invariants:
- inside the client only connections refused or dropped before the request was
  sent are retried (always safe); a 429/5xx comes back here to be translated,
  never slept on out of the caller's sight;
- every request has a connect and a read timeout; a watch carries a server-side
  timeout and a client read timeout a little longer, and ends at its deadline;
- a read-then-write that meets a 409 conflict is run again after a fresh read, a
  bounded number of times.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch import Watch
from urllib3.util.retry import Retry

from core.catalog import Catalog
from core.errors import PermanentError, TransientError, ValidationError

from .create_pool import CreatePool
from .errors import ConflictError, Op, translate
from .options import KubeOptions

log = logging.getLogger(__name__)

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
_WATCH_READ_SLACK_S = 5.0
# Inside the client, retry only connections that were refused or dropped before the request
# was sent (always safe); never a read (a create could run twice) nor a status: urllib3 would
# otherwise sleep Retry-After on 429/503 itself, out of the caller's sight.
_CLIENT_RETRIES = Retry(total=2, connect=2, read=0, redirect=0, status=0, other=0,
                        respect_retry_after_header=False, raise_on_status=False)


class KubeApi:
    """The connection to one API server, and the ways the adapter calls it.

    Talks to the API server ``configuration`` names (a copy is taken; its
    retries are set as above). ``close()`` closes the connection pools.
    ``sleep`` and ``monotonic`` are injectable so that waits can be driven by
    tests.
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
        options = options or KubeOptions()
        # One pooled connection per concurrent create (``bind_many``), plus the watch.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0,
                                                    options.bind_concurrency + 2)
        self._api = k8s.ApiClient(configuration)
        self._core = k8s.CoreV1Api(self._api)
        self._catalog = catalog
        self.options = options
        self._sleep = sleep
        self._monotonic = monotonic
        self._timeout = (self.options.connect_timeout_s, self.options.request_timeout_s)
        # Creates in flight run on this pool (``ClusterPort.bind_many``), made when needed;
        # the resourceVersion each created pod had, until it is waited for.
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # Or, with ``options.create_processes``, worker processes send them (started now).
        self._create_pool: CreatePool | None = CreatePool(
            configuration, processes=options.create_processes,
            threads=-(-options.bind_concurrency // options.create_processes)) \
            if options.create_processes > 0 else None
        self._created_versions: dict[tuple[str, str], str] = {}

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
    ) -> Self:
        """Load the in-cluster service account or a kubeconfig and connect.

        ``in_cluster``: use the pod's service account (``settings.runtime.in_cluster``,
        true when ``KUBERNETES_SERVICE_HOST`` is set) unless a kubeconfig is named;
        otherwise the kubeconfig: ``kubeconfig`` (``KUBECONFIG`` through the settings),
        then ``~/.kube/config``.
        """
        configuration = k8s.Configuration()
        if in_cluster is None:
            in_cluster = False
        in_cluster = in_cluster and kubeconfig is None
        try:
            if in_cluster:
                k8s_config.load_incluster_config(client_configuration=configuration)
                source = "the in-cluster service account"
            else:
                path = os.fspath(kubeconfig) if kubeconfig is not None else \
                    os.path.expanduser("~/.kube/config")
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
        """Close the client's connection pools (and the pool of concurrent creates)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
            workers, self._create_pool = self._create_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if workers is not None:
            workers.close()
        self._api.close()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.options.bind_concurrency,
                                                thread_name_prefix="kube-create")
            return self._pool

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------
    # Calls both ports make
    # --------------------------------------------------------------------------------------
    def _read_node(self, node: str) -> k8s.V1Node:
        return self._call(Op("get", "nodes", name=node), self._core.read_node, name=node)

    def _patch_unschedulable(self, node: str, unschedulable: bool) -> None:
        self._call(Op("patch", "nodes", name=node), self._core.patch_node, name=node,
                   body={"spec": {"unschedulable": unschedulable}},
                   _content_type=STRATEGIC_MERGE)

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
    def _call(self, op: Op, fn: Callable[..., Any], **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self._timeout)
        try:
            return fn(**kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise translate(exc, op=op, retry_delay_s=self.options.retry_delay_s) from exc

    def _list(self, op: Op, fn: Callable[..., Any], **kwargs: Any) -> list[Any]:
        items: list[Any] = []
        token: str | None = None
        while True:
            page = self._call(op, fn, limit=self.options.page_size, _continue=token, **kwargs)
            items.extend(page.items or ())
            token = page.metadata.var_continue if page.metadata else None
            if not token:
                return items

    def _list_raw(self, op: Op, fn: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
        """``_list`` as the API server's JSON: the client's models are not built (at
        thousands of pods, building them is most of the cost of a read)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            response = self._call(op, fn, limit=self.options.page_size, _continue=token,
                                  _preload_content=False, **kwargs)
            try:
                page = json.loads(response.data)
            except ValueError as exc:
                raise TransientError(f"the API server's answer to {op} is not JSON: {exc}",
                                     delay=self.options.retry_delay_s) from exc
            items.extend(page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return items

    def _events(self, op: Op, fn: Callable[..., Any], *, field_selector: str,
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
                    raise translate(exc, op=op, retry_delay_s=self.options.retry_delay_s) \
                        from exc
                version = None  # expired: start again from the current state
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise translate(exc, op=op, retry_delay_s=self.options.retry_delay_s) from exc
            finally:
                stream.close()


def positive(name: str, value: float) -> None:
    """Refuse a wait that is not a finite number of seconds > 0."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValidationError(name, "must be a number > 0")
