"""The twin's telemetry over HTTP, under the metric names of the real exporters.

Why: the Prometheus adapter, the shipped recording and alerting rules and the
console's "production" mode must be exercised against a real Prometheus
without a GPU cluster. This module makes any ``Metrics`` source (the twin)
look like dcgm-exporter plus one vLLM server per deployment, so a real
Prometheus can scrape it (SPEC §3.5).

What is exposed, per scrape, from one ``telemetry()`` reading:

- dcgm-exporter, one series per GPU, labels ``gpu``, ``UUID``, ``device``
  (``nvidia<index>``), ``modelName`` (the product name NVML reports) and
  ``Hostname`` (or ``hostname``: dcgm-exporter versions differ, see
  ``hostname_label``): ``DCGM_FI_DEV_GPU_UTIL`` (percent, 0..100),
  ``DCGM_FI_DEV_POWER_USAGE`` (W), ``DCGM_FI_DEV_FB_USED`` and
  ``DCGM_FI_DEV_FB_FREE`` (MiB), ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ
  since start, a counter without the ``_total`` suffix, as dcgm-exporter
  names it; prometheus-client cannot write ``# TYPE … counter`` for a name
  without ``_total``, so the family is untyped, which PromQL ignores anyway).
- vLLM, one series set per deployment, labels ``model_name`` and ``namespace``
  (the label Kubernetes service discovery would add; it keeps two deployments
  of one model apart): ``vllm:request_success_total{finished_reason}`` counting
  EVERY finished request (``stop`` = successes, ``abort`` = failures, ``length``
  and ``error`` present at 0, as vLLM V1 pre-creates one child per reason),
  ``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
  ``vllm:e2e_request_latency_seconds`` and ``vllm:time_to_first_token_seconds``
  (histograms with the twin's buckets), ``vllm:prompt_tokens_total`` and
  ``vllm:generation_tokens_total``.

Invariants kept: every scrape reads the source exactly once, so all series of
one scrape belong to one instant; values are converted only by unit (×100 for
utilization, ×1000 for energy), never rounded; histogram buckets are
cumulative and end with ``+Inf`` equal to ``_count``; when the source is down
(``TransientError``) the scrape succeeds with no twin series, as an exporter
whose backend vanished would; the twin's collector lives in its own
``CollectorRegistry``, never in prometheus-client's global one.

``telemetry_families`` and ``render_exposition`` are pure (no I/O).
``start_exporter`` and ``serve_registry`` are the edge: they bind a socket and
serve HTTP from a daemon thread, always in the text format 0.0.4 (see
``CONTENT_TYPE`` for why not OpenMetrics).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from core.errors import TransientError, ValidationError
from core.ports import Metrics
from core.telemetry import FleetTelemetry, GpuTelemetry, Histogram

HostnameLabel = Literal["Hostname", "hostname"]

SUCCESS_REASON = "stop"
FAILURE_REASON = "abort"
# vLLM V1 creates one child of vllm:request_success_total per finish reason at start.
FINISHED_REASONS: tuple[str, ...] = ("stop", "length", "abort", "error")

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


def product_name(gpu_type: str, memory_total_mib: int) -> str:
    """The ``modelName`` dcgm-exporter would report for a GPU of this type and size."""
    known = _PRODUCT_NAMES.get((gpu_type, memory_total_mib))
    if known is not None:
        return known
    return f"NVIDIA {gpu_type} {round(memory_total_mib / 1024)}GB"


def _gpu_labels(g: GpuTelemetry, hostname_label: HostnameLabel) -> tuple[list[str], list[str]]:
    names = ["gpu", "UUID", "device", "modelName", hostname_label]
    values = [str(g.gpu_index), g.uuid, f"nvidia{g.gpu_index}",
              product_name(g.gpu_type, g.memory_total_mib), g.node]
    return names, values


def _dcgm_families(gpus: Sequence[GpuTelemetry], hostname_label: HostnameLabel
                   ) -> list[Metric]:
    if not gpus:
        return []
    names, _ = _gpu_labels(gpus[0], hostname_label)
    util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=names)
    power = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=names)
    used = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).",
                             labels=names)
    free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).",
                             labels=names)
    energy = Metric("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                    "Total energy consumption since boot (in mJ).", "unknown")
    for g in gpus:
        _, values = _gpu_labels(g, hostname_label)
        util.add_metric(values, g.utilization * 100.0)
        power.add_metric(values, g.power_w)
        used.add_metric(values, float(g.memory_used_mib))
        free.add_metric(values, float(g.memory_free_mib))
        energy.add_sample("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                          dict(zip(names, values, strict=True)), g.energy_j * 1000.0)
    return [util, power, used, free, energy]


def _cumulative(h: Histogram) -> list[tuple[str, float]]:
    """prometheus-client's bucket list: (upper bound, cumulative count), ending at +Inf."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*h.bounds, float("inf")), h.counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return out


def _vllm_families(tel: FleetTelemetry) -> list[Metric]:
    labels = ["model_name", "namespace"]
    success = CounterMetricFamily(
        "vllm:request_success", "Count of finished requests, by finish reason.",
        labels=[*labels, "finished_reason"])
    waiting = GaugeMetricFamily("vllm:num_requests_waiting",
                                "Number of requests waiting to be processed.", labels=labels)
    running = GaugeMetricFamily("vllm:num_requests_running",
                                "Number of requests in model execution batches.", labels=labels)
    e2e = HistogramMetricFamily("vllm:e2e_request_latency_seconds",
                                "Histogram of end to end request latency in seconds.",
                                labels=labels)
    ttft = HistogramMetricFamily("vllm:time_to_first_token_seconds",
                                 "Histogram of time to first token in seconds.", labels=labels)
    prompt = CounterMetricFamily("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                 labels=labels)
    gen = CounterMetricFamily("vllm:generation_tokens",
                              "Number of generation tokens processed.", labels=labels)
    for d in tel.deployments:
        key = [d.model, d.namespace]
        waiting.add_metric(key, float(d.queue_waiting))
        running.add_metric(key, float(d.running))
        c = d.counters
        if c is None:  # a source without raw counters exposes only the gauges
            continue
        by_reason = {SUCCESS_REASON: c.success_total, FAILURE_REASON: c.failure_total}
        for reason in FINISHED_REASONS:
            success.add_metric([*key, reason], float(by_reason.get(reason, 0)))
        e2e.add_metric(key, _cumulative(c.e2e_latency), c.e2e_latency.sum)
        ttft.add_metric(key, _cumulative(c.ttft), c.ttft.sum)
        prompt.add_metric(key, float(c.prompt_tokens_total))
        gen.add_metric(key, float(c.generation_tokens_total))
    return [success, waiting, running, e2e, ttft, prompt, gen]


def telemetry_families(tel: FleetTelemetry, *, hostname_label: HostnameLabel = "Hostname"
                       ) -> list[Metric]:
    """The metric families one reading exposes (pure)."""
    if not tel.gpus and not tel.deployments:
        return []
    return [*_dcgm_families(tel.gpus, hostname_label), *_vllm_families(tel)]


class TwinCollector(Collector):
    """Reads the source once per scrape; no series while the source is down."""

    def __init__(self, source: Metrics, *, hostname_label: HostnameLabel = "Hostname") -> None:
        if hostname_label not in ("Hostname", "hostname"):
            raise ValidationError("hostname_label", "must be 'Hostname' or 'hostname'")
        self._source = source
        self._hostname_label: HostnameLabel = hostname_label

    def describe(self) -> Iterable[Metric]:
        # Returning nothing keeps the registry from reading the twin at registration.
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            tel = self._source.telemetry()
        except TransientError:
            return []
        return telemetry_families(tel, hostname_label=self._hostname_label)


def build_registry(source: Metrics, *, hostname_label: HostnameLabel = "Hostname"
                   ) -> CollectorRegistry:
    """A dedicated registry holding only the twin's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TwinCollector(source, hostname_label=hostname_label))
    return registry


def render_exposition(source: Metrics, *, hostname_label: HostnameLabel = "Hostname") -> str:
    """The text a scrape would return now (Prometheus text format 0.0.4)."""
    return generate_latest(build_registry(source, hostname_label=hostname_label)).decode()


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


# Always the classic text format (what dcgm-exporter serves). prometheus-client 0.26 would
# answer Prometheus' OpenMetrics Accept header with sample names whose ':' is escaped to '_'
# (vllm:request_success_total → vllm_request_success_total; client_python issue #1177), and
# the rules and the adapter query the real, colon names.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape never blocks stop()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _metrics_app(registry: CollectorRegistry) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            start_response("405 Method Not Allowed", [("Allow", "GET")])
            return [b""]
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_registry(registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 0
                   ) -> ExporterHandle:
    """Serve ``registry`` over HTTP from a daemon thread (I/O: binds ``host:port``).

    Every path answers with the registry in the text format 0.0.4; ``port=0`` picks a
    free port, and the handle says which.
    """
    server = make_server(host, port, _metrics_app(registry), server_class=_Server,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"exporter-{server.server_port}",
                              daemon=True)
    thread.start()
    return ExporterHandle(host=host, port=int(server.server_port), registry=registry,
                          _server=server, _thread=thread)


def start_exporter(metrics_source: Metrics, *, host: str = "127.0.0.1", port: int = 0,
                   hostname_label: HostnameLabel = "Hostname") -> ExporterHandle:
    """Serve ``metrics_source``'s telemetry on ``http://host:port/metrics`` (the edge: I/O).

    Binds loopback by default; call ``stop()`` (or use it as a context manager).
    """
    return serve_registry(build_registry(metrics_source, hostname_label=hostname_label),
                          host=host, port=port)
