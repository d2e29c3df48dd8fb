"""The twin's telemetry over HTTP, shaped like the real exporters of a GPU fleet.

Why: the Prometheus adapter, the shipped recording and alerting rules and the
console's "production" mode must be exercised against a real Prometheus
without a GPU cluster, and against what the real exporters emit, not what the
adapter would like them to emit (issue 16). One ``start_exporter`` serves, from
one ``Metrics`` source (the twin), the pages of three kinds of exporter:

- ``/dcgm``: dcgm-exporter. One series per GPU and per pod using it (its
  Kubernetes pod mapping), labels ``gpu``, ``UUID`` (or ``uuid``, as
  ``--use-old-namespace`` writes it), ``device``, ``modelName``, ``Hostname``
  (or ``hostname``: versions differ), ``pod``/``namespace``/``container`` (empty
  on a GPU no pod uses, which Prometheus stores as absent):
  ``DCGM_FI_DEV_GPU_UTIL`` (%), ``DCGM_FI_DEV_POWER_USAGE`` (W),
  ``DCGM_FI_DEV_FB_USED``/``_FREE``/``_RESERVED`` (MiB) and
  ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ; a counter without ``_total``,
  which prometheus-client can only write untyped).
- ``/vllm/<namespace>/<pod>``: one vLLM V1 server per serving pod, labels
  ``model_name`` and ``engine`` only (``namespace``, ``pod`` and ``node`` are
  target labels that service discovery, or here ``scrape_configs``, attaches):
  ``vllm:request_success_total{finished_reason}`` with every reason pre-created
  and ``abort`` never incremented, as vLLM does not count aborted requests
  (vllm-project/vllm#31503); aborted requests are also absent from the latency
  histograms; ``vllm:num_requests_waiting``/``_running``, the e2e and TTFT
  histograms and the token counters. A deployment's figures are split over its
  pods and each pod's over its ``engines``.
- ``/gateway``: ingress-nginx, ``nginx_ingress_controller_requests`` by
  ``namespace``, ``ingress`` (the model), ``service`` and ``status``: the only
  place an aborted request is counted (``504``; successes are ``200``).

Every page goes through prometheus-client's own content negotiation: a
Prometheus 2.x that asks for OpenMetrics gets ``vllm_…`` names (':' escaped,
client_python#1177), as it does from a real vLLM.

Invariants kept: every scrape reads the source exactly once, so the series of
one page belong to one instant; values are converted only by unit, never
rounded; split counters stay monotonic (part ``j`` of ``P`` holds the
requests ``m`` with ``m % P == j``) and the parts sum to the whole; buckets are
cumulative and end with ``+Inf`` equal to ``_count``; while the source is down
(``TransientError``) every page answers with no twin series; the collectors
live in their own ``CollectorRegistry``, never in the global one.

The ``*_families``, ``servers``, ``render_exposition`` and ``scrape_configs``
functions are pure; ``start_exporter`` and ``serve_registry`` are the edge.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from core.errors import TransientError, ValidationError
from core.ports import Metrics
from core.telemetry import DeploymentTelemetry, FleetTelemetry, GpuTelemetry, Histogram

HostnameLabel = Literal["Hostname", "hostname"]
UuidLabel = Literal["UUID", "uuid"]

SUCCESS_REASON = "stop"
ABORT_REASON = "abort"  # created, never incremented (vLLM does not count aborts)
# vLLM V1 creates one child of vllm:request_success_total per finish reason at start.
FINISHED_REASONS: tuple[str, ...] = ("stop", "length", "abort", "error")
GATEWAY_OK_STATUS = "200"
GATEWAY_FAILED_STATUS = "504"  # what a client sees of a request the server aborted
SERVER_CONTAINER = "vllm"
DCGM_PATH = "/dcgm"
GATEWAY_PATH = "/gateway"
VLLM_PREFIX = "/vllm/"

# Product names as NVML (and so dcgm-exporter's ``modelName``) reports them,
# keyed by (catalog type, memory in MiB).
_PRODUCT_NAMES: dict[tuple[str, int], str] = {
    ("H100", 81920): "NVIDIA H100 80GB HBM3",
    ("H100", 95830): "NVIDIA H100 NVL",
    ("H200", 143771): "NVIDIA H200",
    ("A100", 40960): "NVIDIA A100-SXM4-40GB",
    ("A100", 81920): "NVIDIA A100-SXM4-80GB",
    ("L4", 23034): "NVIDIA L4",
}


ITL_NAME = "vllm:inter_token_latency_seconds"
OLD_ITL_NAME = "vllm:time_per_output_token_seconds"


@dataclass(frozen=True, slots=True)
class Shape:
    """Which real exporter variants the pages emulate."""

    engines: int = 1  # data-parallel engines per vLLM server (vLLM's ``engine`` label)
    gateway: bool = True  # serve /gateway (ingress-nginx request counts)
    pod_mapping: bool = True  # dcgm-exporter's pod/namespace/container labels
    hostname_label: HostnameLabel = "Hostname"
    uuid_label: UuidLabel = "UUID"
    # vLLM's inter-token latency histogram: ``inter_token_latency`` (current releases)
    # or ``time_per_output_token`` (releases before it).
    itl_name: str = ITL_NAME

    def __post_init__(self) -> None:
        if self.itl_name not in (ITL_NAME, OLD_ITL_NAME):
            raise ValidationError("exporter.itl_name", f"must be {ITL_NAME!r} or "
                                                       f"{OLD_ITL_NAME!r}")
        if self.engines < 1:
            raise ValidationError("exporter.engines", "must be at least 1")
        if self.hostname_label not in ("Hostname", "hostname"):
            raise ValidationError("hostname_label", "must be 'Hostname' or 'hostname'")
        if self.uuid_label not in ("UUID", "uuid"):
            raise ValidationError("uuid_label", "must be 'UUID' or 'uuid'")


@dataclass(frozen=True, slots=True)
class Server:
    """One vLLM server (one serving pod) and the target labels discovery would give it."""

    namespace: str
    pod: str
    model: str
    node: str

    @property
    def path(self) -> str:
        return f"{VLLM_PREFIX}{self.namespace}/{self.pod}"


def product_name(gpu_type: str, memory_total_mib: int) -> str:
    """The ``modelName`` dcgm-exporter would report for a GPU of this type and size."""
    known = _PRODUCT_NAMES.get((gpu_type, memory_total_mib))
    if known is not None:
        return known
    return f"NVIDIA {gpu_type} {round(memory_total_mib / 1024)}GB"


def part(count: int, *, parts: int, index: int) -> int:
    """Part ``index`` of ``count`` split ``parts`` ways: monotonic in ``count``, the parts
    summing to ``count``."""
    return count // parts + (1 if index < count % parts else 0)


# -- dcgm-exporter ----------------------------------------------------------------------------
_DCGM_GAUGES: tuple[tuple[str, str], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB)."),
)
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


def _dcgm_values(g: GpuTelemetry) -> tuple[float, ...]:
    return (g.utilization * 100.0, g.power_w, float(g.memory_used_mib),
            float(g.memory_free_mib), float(g.memory_reserved_mib))


def _pod_labels(namespaced_pod: str) -> tuple[str, str, str]:
    """(pod, namespace, container) as dcgm-exporter's pod mapping writes them."""
    namespace, _, pod = namespaced_pod.partition("/")
    return pod, namespace, SERVER_CONTAINER


def dcgm_families(tel: FleetTelemetry, shape: Shape = Shape()) -> list[Metric]:
    """dcgm-exporter's page: one series per GPU, or per (GPU, pod) with pod mapping."""
    if not tel.gpus:
        return []
    names = ["gpu", shape.uuid_label, "device", "modelName", shape.hostname_label]
    if shape.pod_mapping:
        names += ["pod", "namespace", "container"]
    gauges = [GaugeMetricFamily(n, doc, labels=names) for n, doc in _DCGM_GAUGES]
    energy = Metric(ENERGY, "Total energy consumption since boot (in mJ).", "unknown")
    for g in tel.gpus:
        base = [str(g.gpu_index), g.uuid, f"nvidia{g.gpu_index}",
                product_name(g.gpu_type, g.memory_total_mib), g.node]
        users: Sequence[tuple[str, ...]] = [()]
        if shape.pod_mapping:
            users = [_pod_labels(p) for p in g.pods] or [("", "", "")]
        for user in users:
            values = [*base, *user]
            for family, value in zip(gauges, _dcgm_values(g), strict=True):
                family.add_metric(values, value)
            energy.add_sample(ENERGY, dict(zip(names, values, strict=True)),
                              g.energy_j * 1000.0)
    return [*gauges, energy]


# -- vLLM -------------------------------------------------------------------------------------
def servers(tel: FleetTelemetry) -> list[Server]:
    """Every serving pod of every deployment, with the node its GPU is on."""
    node_of = {p: g.node for g in tel.gpus for p in g.pods}
    out = []
    for d in tel.deployments:
        for p in d.pods:
            namespace, pod = p.split("/", 1)
            out.append(Server(namespace=namespace, pod=pod, model=d.model,
                              node=node_of.get(p, d.nodes[0] if d.nodes else "")))
    return out


def _split_histogram(h: Histogram, *, parts: int, index: int) -> tuple[list[tuple[str, float]],
                                                                      float]:
    """This part's cumulative buckets (ending at +Inf) and its share of the sum."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*h.bounds, float("inf")), h.counts, strict=True):
        running += part(count, parts=parts, index=index)
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return out, h.sum / parts


def _server_of(tel: FleetTelemetry, namespace: str, pod: str
               ) -> tuple[DeploymentTelemetry, int] | None:
    for d in tel.deployments:
        if f"{namespace}/{pod}" in d.pods:
            return d, d.pods.index(f"{namespace}/{pod}")
    return None


def server_families(tel: FleetTelemetry, *, namespace: str, pod: str, shape: Shape = Shape()
                    ) -> list[Metric]:
    """One vLLM server's page: its share of its deployment, per engine; [] if it is gone."""
    found = _server_of(tel, namespace, pod)
    if found is None:
        return []
    d, replica = found
    labels = ["model_name", "engine"]
    success = CounterMetricFamily(
        "vllm:request_success", "Count of successfully processed requests.",
        labels=[*labels, "finished_reason"])
    waiting = GaugeMetricFamily("vllm:num_requests_waiting",
                                "Number of requests waiting to be processed.", labels=labels)
    running = GaugeMetricFamily("vllm:num_requests_running",
                                "Number of requests in model execution batches.", labels=labels)
    e2e = HistogramMetricFamily("vllm:e2e_request_latency_seconds",
                                "Histogram of e2e request latency in seconds.", labels=labels)
    ttft = HistogramMetricFamily("vllm:time_to_first_token_seconds",
                                 "Histogram of time to first token in seconds.", labels=labels)
    itl = HistogramMetricFamily(shape.itl_name, "Histogram of inter-token latency in seconds."
                                if shape.itl_name == ITL_NAME else
                                "Histogram of time per output token in seconds.", labels=labels)
    prompt = CounterMetricFamily("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                 labels=labels)
    gen = CounterMetricFamily("vllm:generation_tokens",
                              "Number of generation tokens processed.", labels=labels)
    parts = len(d.pods) * shape.engines
    for engine in range(shape.engines):
        index = replica * shape.engines + engine
        key = [d.model, str(engine)]
        waiting.add_metric(key, float(part(d.queue_waiting, parts=parts, index=index)))
        running.add_metric(key, float(part(d.running, parts=parts, index=index)))
        c = d.counters
        if c is None:  # a source without raw counters exposes only the gauges
            continue
        ok = part(c.success_total, parts=parts, index=index)
        for reason in FINISHED_REASONS:
            success.add_metric([*key, reason], float(ok if reason == SUCCESS_REASON else 0))
        for family, h in ((e2e, c.e2e_latency), (ttft, c.ttft), (itl, c.itl)):
            if h is None:
                continue
            buckets, total = _split_histogram(h, parts=parts, index=index)
            family.add_metric(key, buckets, total)
        prompt.add_metric(key, float(part(c.prompt_tokens_total, parts=parts, index=index)))
        gen.add_metric(key, float(part(c.generation_tokens_total, parts=parts, index=index)))
    return [success, waiting, running, e2e, ttft, itl, prompt, gen]


# -- ingress-nginx ----------------------------------------------------------------------------
GATEWAY_REQUESTS = "nginx_ingress_controller_requests"
_GATEWAY_LABELS = ("controller_class", "controller_namespace", "controller_pod", "host",
                   "ingress", "method", "namespace", "path", "service", "status")


def gateway_families(tel: FleetTelemetry) -> list[Metric]:
    """ingress-nginx's request counter: every request a client sent, by status."""
    if not tel.deployments:
        return []
    requests = Metric(GATEWAY_REQUESTS, "The total number of client requests", "unknown")
    for d in tel.deployments:
        c = d.counters
        if c is None:
            continue
        for status, count in ((GATEWAY_OK_STATUS, c.success_total),
                              (GATEWAY_FAILED_STATUS, c.failure_total)):
            values = ("k8s.io/ingress-nginx", "ingress-nginx", "ingress-nginx-controller-0",
                      "", d.model, "POST", d.namespace, "/v1", d.model, status)
            requests.add_sample(GATEWAY_REQUESTS, dict(zip(_GATEWAY_LABELS, values, strict=True)),
                                float(count))
    return [requests]


def page_families(tel: FleetTelemetry, path: str, shape: Shape = Shape()) -> list[Metric]:
    """The families the page at ``path`` exposes (pure); [] for an unknown path."""
    if path == DCGM_PATH:
        return dcgm_families(tel, shape)
    if path == GATEWAY_PATH:
        return gateway_families(tel) if shape.gateway else []
    if path.startswith(VLLM_PREFIX):
        namespace, _, pod = path.removeprefix(VLLM_PREFIX).partition("/")
        return server_families(tel, namespace=namespace, pod=pod, shape=shape)
    return []


class PageCollector(Collector):
    """Reads the source once per scrape of one page; no series while the source is down."""

    def __init__(self, source: Metrics, *, path: str, shape: Shape = Shape()) -> None:
        self._source = source
        self._path = path
        self._shape = shape

    def describe(self) -> Iterable[Metric]:
        # Returning nothing keeps the registry from reading the twin at registration.
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            tel = self._source.telemetry()
        except TransientError:
            return []
        return page_families(tel, self._path, self._shape)


def build_registry(source: Metrics, *, path: str = DCGM_PATH, shape: Shape = Shape()
                   ) -> CollectorRegistry:
    """A dedicated registry holding only the collector of one page."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PageCollector(source, path=path, shape=shape))
    return registry


def render_exposition(source: Metrics, *, path: str = DCGM_PATH, shape: Shape = Shape(),
                      accept: str = "") -> str:
    """The text a scrape of ``path`` with this ``Accept`` header would return now."""
    encoder, _ = choose_encoder(accept)
    return encoder(build_registry(source, path=path, shape=shape)).decode()


# -- Prometheus scrape configuration ----------------------------------------------------------
COLON_RELABEL: dict[str, Any] = {  # vllm_x (escaped by content negotiation) → vllm:x
    "source_labels": ["__name__"], "regex": "vllm_(.+)", "target_label": "__name__",
    "replacement": "vllm:$1", "action": "replace"}


def scrape_configs(target: str, tel: FleetTelemetry, *, shape: Shape = Shape(),
                   colon_relabel: bool = True, honor_labels: bool = False,
                   dcgm_pod: str = "nvidia-dcgm-exporter-0",
                   dcgm_namespace: str = "gpu-operator") -> list[dict[str, Any]]:
    """Prometheus ``scrape_configs`` for the pages at ``target`` (``host:port``), with the
    target labels a PodMonitor's relabelings would attach from Kubernetes discovery:
    each vLLM server gets ``namespace``, ``pod`` and ``node``; dcgm-exporter gets its own
    DaemonSet pod's ``namespace`` and ``pod``, so under ``honor_labels`` false the pod
    mapping's labels arrive as ``exported_pod``/``exported_namespace``."""
    vllm: dict[str, Any] = {
        "job_name": "vllm", "honor_labels": honor_labels,
        "static_configs": [{"targets": [target],
                            "labels": {"__metrics_path__": s.path, "namespace": s.namespace,
                                       "pod": s.pod, "node": s.node}}
                           for s in servers(tel)]}
    if colon_relabel:
        vllm["metric_relabel_configs"] = [COLON_RELABEL]
    jobs = [
        {"job_name": "dcgm-exporter", "honor_labels": honor_labels,
         "static_configs": [{"targets": [target],
                             "labels": {"__metrics_path__": DCGM_PATH,
                                        "namespace": dcgm_namespace, "pod": dcgm_pod}}]},
        vllm,
    ]
    if shape.gateway:
        jobs.append({"job_name": "ingress-nginx", "honor_labels": honor_labels,
                     "static_configs": [{"targets": [target],
                                         "labels": {"__metrics_path__": GATEWAY_PATH}}]})
    return jobs


# -- the edge: HTTP ---------------------------------------------------------------------------
@dataclass
class ExporterHandle:
    """A running exporter; ``stop()`` closes its socket and joins its thread (idempotent)."""

    host: str
    port: int
    registry: CollectorRegistry
    _server: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def target(self) -> str:
        """``host:port``, as a Prometheus ``static_configs`` target."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> ExporterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape never blocks stop()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _metrics_app(registry_for: Callable[[str], CollectorRegistry | None]
                 ) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            start_response("405 Method Not Allowed", [("Allow", "GET")])
            return [b""]
        registry = registry_for(environ.get("PATH_INFO") or "/")
        if registry is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        # prometheus-client's own negotiation, as vLLM's and most Python exporters' are.
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        body = encoder(registry)
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def _serve(app: Callable[..., list[bytes]], registry: CollectorRegistry, *, host: str,
           port: int) -> ExporterHandle:
    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"exporter-{server.server_port}",
                              daemon=True)
    thread.start()
    return ExporterHandle(host=host, port=int(server.server_port), registry=registry,
                          _server=server, _thread=thread)


def serve_registry(registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 0
                   ) -> ExporterHandle:
    """Serve ``registry`` over HTTP from a daemon thread (I/O: binds ``host:port``).

    Every path answers with the registry, in the format the scraper's ``Accept`` header
    negotiates; ``port=0`` picks a free port, and the handle says which.
    """
    return _serve(_metrics_app(lambda _path: registry), registry, host=host, port=port)


def start_exporter(metrics_source: Metrics, *, host: str = "127.0.0.1", port: int = 0,
                   shape: Shape = Shape(),
                   source_for: Callable[[str], Metrics] | None = None) -> ExporterHandle:
    """Serve ``metrics_source``'s pages (``/dcgm``, ``/gateway``, ``/vllm/<ns>/<pod>``) on
    ``host:port`` (the edge: I/O); any other path is 404. Binds loopback by default; call
    ``stop()`` (or use it as a context manager); ``scrape_configs`` says how to scrape it.
    ``source_for``: the source of each page instead (a test records what each page read).
    """
    pick: Callable[[str], Metrics] = source_for or (lambda _path: metrics_source)
    lock = threading.Lock()
    registries: dict[str, CollectorRegistry] = {}

    def registry_for(path: str) -> CollectorRegistry | None:
        if path not in (DCGM_PATH, GATEWAY_PATH) and not path.startswith(VLLM_PREFIX):
            return None
        with lock:
            if path not in registries:
                registries[path] = build_registry(pick(path), path=path, shape=shape)
            return registries[path]

    dcgm = build_registry(pick(DCGM_PATH), path=DCGM_PATH, shape=shape)
    registries[DCGM_PATH] = dcgm
    return _serve(_metrics_app(registry_for), dcgm, host=host, port=port)

