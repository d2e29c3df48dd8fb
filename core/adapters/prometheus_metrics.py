"""The ``Metrics`` port read from a real Prometheus (dcgm-exporter and vLLM series).

Why: in production the console and the controller read the same telemetry the
twin produces, from the Prometheus that scrapes the fleet's exporters
(SPEC §3.5). This module is the only one that imports ``prometheus_api_client``;
its results never leave it: callers get ``FleetTelemetry``.

What it reads, all PromQL evaluated at ONE instant (the server's ``time()``,
read first), so one reading never mixes two moments:

- per GPU (dcgm-exporter): ``DCGM_FI_DEV_GPU_UTIL`` ÷ 100 → 0..1,
  ``DCGM_FI_DEV_POWER_USAGE`` (W), ``DCGM_FI_DEV_FB_USED``, ``…_FB_FREE`` and
  ``…_FB_RESERVED`` (MiB; total = used + free + reserved),
  ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ → J). The node is the
  ``Hostname`` label, or ``hostname`` (dcgm-exporter versions differ), or the
  host of ``instance``; both spellings are grouped on in one query and merged
  here, so a fleet mixing versions reads as one; ``UUID`` or ``uuid``
  (``--use-old-namespace``) likewise. MIG instances (``GPU_I_ID``) stay apart:
  one reading per instance, ``mig_instance`` set, power counted once per card.
- which pods use each GPU: dcgm-exporter's Kubernetes pod mapping, ``pod``/
  ``namespace``, or ``exported_pod``/``exported_namespace`` where the scrape
  keeps ``honor_labels: false`` and the target carries the exporter's own pod.
  Only pods that serve vLLM count, so the exporter's own pod (the target label
  an idle GPU's series gets) is never a model server. Per-GPU QPS is its
  pods' QPS split over the GPUs each uses; without a mapping, a node's QPS
  (vLLM's ``node`` target label) is split over its GPUs that hold memory.
- per deployment (vLLM, keyed by ``model_name`` and ``namespace``): QPS =
  ``rate(vllm:request_success_total[w])`` summed over every finish reason for
  w = 1m/5m/15m/1h (every request the engine finished; vLLM does not count
  aborted ones, see below); success rate = the ``stop|length`` share over
  5m; p99 and mean e2e latency and p50 TTFT from the histograms over 5m; queue
  waiting/running summed over replicas and engines; generation tokens/s over
  1m; raw counters. Replicas = distinct ``pod`` target labels of
  ``vllm:num_requests_running`` (else distinct ``instance``), never series,
  since vLLM writes one series per data-parallel ``engine``. Every vLLM
  selector also matches the ``vllm_…`` spelling (see ``vllm_series``); nodes
  come from the pod mapping and from the ``node`` label (``node_label``).
  Deployments are keyed by (namespace, model) everywhere.
- client-visible success: vLLM does not count aborted requests, so where a
  gateway is scraped (ingress-nginx's ``nginx_ingress_controller_requests``,
  one Ingress per deployment named like its model: ``gateway_model_label``)
  a deployment's QPS, success rate (statuses other than ``5xx``/``499``) and
  request counters come from it, ``success_source == "gateway"``; otherwise
  from vLLM's finishes, ``success_source == "engine"`` (aborts not counted).

Invariants: no figure is invented: a window without requests gives
``success_rate``/latencies ``None``, never 0 or NaN; utilization is clipped to
[0, 1]; every client or HTTP failure becomes ``TransientError`` through
``_unavailable`` (one translation function, chained with ``raise … from``), and
``available()`` never raises. No data is not zero: a Prometheus that answers
but holds no dcgm-exporter or vLLM series (it scrapes nothing, or its targets
serve empty pages), or whose newest sample of either family is older than
``max_sample_age_s``, raises ``NoDataError`` naming what is missing, never a
reading of zeros. Credentials in the URL are used for the requests but never
shown: messages name ``display_url`` (``core.redact``).

Measurements only: no cost. Which GPUs host a model server, and what share
each holds, is the cluster's layout (MPS thread percentages are in no
metric), so ``core.cost`` prices a reading with the cluster's nodes, exactly
as it prices the twin's.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from core.adapters.errors import innermost_reason
from core.adapters.prometheus_attribution import (
    GpuKey,
    attribute_gpus,
    fleet_totals,
    mapped_pod,
    with_nodes,
)
from core.adapters.prometheus_histograms import ITL_METRICS, histogram_of, itl_of
from core.adapters.prometheus_history import range_series
from core.adapters.settings_source import load_settings
from core.catalog import Catalog
from core.errors import TransientError, ValidationError
from core.redact import redact_text, redact_url
from core.settings import Settings
from core.telemetry import (
    E2E_LATENCY_BUCKETS_S,
    SUCCESS_FROM_ENGINE,
    SUCCESS_FROM_GATEWAY,
    TTFT_BUCKETS_S,
    DeploymentCounters,
    DeploymentTelemetry,
    FleetTelemetry,
    GpuTelemetry,
    NoDataError,
)

SUCCESS_REASONS = "stop|length"
_HOST_LABELS = ("Hostname", "hostname")
_UUID_LABELS = ("UUID", "uuid")
_MIG_LABEL = "GPU_I_ID"
_DCGM = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED",
         "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED",
         "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
GATEWAY_REQUESTS = "nginx_ingress_controller_requests"
GATEWAY_FAILED = "5..|499"  # client-visible failures; 499: the client gave up
_QPS_WINDOWS = ("1m", "5m", "15m", "1h")
_RETRY_DELAY_S = 5.0
# The series whose newest sample tells whether Prometheus still scrapes each family.
_VLLM_LIVE = ("request_success_total", "num_requests_running", "num_requests_waiting")
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dcgm-exporter", _DCGM),
    ("vLLM", tuple(f"vllm{sep}{n}" for n in _VLLM_LIVE for sep in (":", "_"))),
)


def newest_sample_expr(names: Iterable[str]) -> str:
    """PromQL for the newest sample's timestamp over every series of ``names``.

    ``timestamp()`` gives a sample's own time only over a plain selector (over any other
    expression it gives the evaluation time), and it drops the metric name, so two
    metrics of one GPU would collide in one selector: one ``max(timestamp(name))`` per
    name, told apart by a label, then the max of those."""
    terms = [f'label_replace(max(timestamp({n})), "gsc_series", "{i}", "", "")'
             for i, n in enumerate(names)]
    return f"max({' or '.join(terms)})"

DeploymentKey = tuple[str, str]  # (namespace, model)


def vllm_series(name: str, matchers: str = "") -> str:
    """A selector for vLLM's ``vllm:<name>`` that also matches ``vllm_<name>``.

    Recent prometheus-client releases (0.26 here; vLLM serves its metrics with it)
    escape ':' to '_' in OpenMetrics sample names when the scraper does not ask for
    UTF-8 names, which Prometheus 2.x does not (client_python issue #1177); such a
    fleet stores ``vllm_request_success_total``. One exporter never serves both
    spellings at once.
    """
    extra = f", {matchers}" if matchers else ""
    return f'{{__name__=~"vllm[:_]{re.escape(name)}"{extra}}}'


def _vllm_name(name: str) -> str:
    """``vllm_x`` (escaped) → ``vllm:x``."""
    return "vllm:" + name[5:] if name.startswith("vllm_") else name


@dataclass(frozen=True, slots=True)
class _Sample:
    labels: Mapping[str, str]
    value: float



def _unavailable(exc: BaseException, *, url: str, timeout_s: float) -> TransientError:
    """The one place where client and HTTP failures become the project's error.

    ``url`` is the display URL (no credentials); the message is redacted once more, in
    case a client library quoted the URL it was given."""
    if isinstance(exc, ValueError | KeyError | TypeError | IndexError | AttributeError):
        # requests' JSONDecodeError is a ValueError: something answered, not Prometheus.
        message = (f"metrics unavailable: {url} did not answer like a Prometheus server "
                   f"({type(exc).__name__}: {innermost_reason(exc)})")
    elif isinstance(exc, requests.Timeout):
        message = f"metrics unavailable: Prometheus at {url} did not answer within {timeout_s} s"
    elif isinstance(exc, requests.ConnectionError):
        why = innermost_reason(exc)
        message = f"metrics unavailable: Prometheus at {url} is unreachable ({why})"
    elif isinstance(exc, PrometheusApiClientException):
        message = f"metrics unavailable: Prometheus at {url} refused the query ({exc})"
    else:
        message = (f"metrics unavailable: Prometheus at {url} failed "
                   f"({type(exc).__name__}: {innermost_reason(exc)})")
    return TransientError(redact_text(message), delay=_RETRY_DELAY_S)


def gpu_type_of(model_name: str, catalog: Catalog) -> str:
    """The catalog type named in dcgm-exporter's ``modelName`` ("NVIDIA H100 80GB HBM3" →
    "H100"); the longest catalog name that appears as a whole token wins; the product
    name itself when none does."""
    best = ""
    upper = model_name.upper()
    for name in catalog.names:
        pattern = rf"(?<![A-Z0-9]){re.escape(name.upper())}(?![0-9])"
        if len(name) > len(best) and re.search(pattern, upper):
            best = name
    return best or model_name


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class PrometheusMetrics:
    """``Metrics`` port over the Prometheus HTTP API (``prometheus-api-client``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        hostname_label: str | None = None,
        settings: Settings | None = None,
        node_label: str = "node",
        idle_memory_mib: int = 1024,
        default_namespace: str = "default",
        connect_retries: int = 1,
        max_sample_age_s: float = 90.0,
        gateway_model_label: str = "ingress",
    ) -> None:
        """``url``: Prometheus' base URL. ``hostname_label``: the node label to prefer
        when a series carries both spellings (``None``: ``Hostname``, then
        ``hostname``). ``settings``: the catalog that names GPU types and their throughput
        (default: ``load_settings()``). ``idle_memory_mib``: framebuffer use above which
        a GPU counts as hosting a model server when a node's QPS is split over its GPUs.
        ``max_sample_age_s``: a family whose newest sample is older reads as no data.
        ``gateway_model_label``: the gateway series' label that names the model (one
        Ingress, or route, per deployment, named like vLLM's ``model_name``)."""
        if not url.startswith(("http://", "https://")):
            raise ValidationError("prometheus.url", "must start with http:// or https://")
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValidationError("prometheus.timeout_s", "must be a number > 0")
        if not math.isfinite(max_sample_age_s) or max_sample_age_s <= 0:
            raise ValidationError("prometheus.max_sample_age_s", "must be a number > 0")
        self.url = url.rstrip("/")
        self.display_url = redact_url(self.url)  # for messages and logs: no credentials
        self._max_age_s = float(max_sample_age_s)
        self._timeout_s = float(timeout_s)
        self._host_labels = tuple(dict.fromkeys((hostname_label, *_HOST_LABELS))) \
            if hostname_label else _HOST_LABELS
        self._settings = settings if settings is not None else load_settings()
        self._node_label = node_label
        self._idle_memory_mib = idle_memory_mib
        self._default_namespace = default_namespace
        self._gateway_model_label = gateway_model_label
        # No retries on HTTP status (the monitoring loop retries on TransientError);
        # one quick retry on a refused or reset connection.
        retry = Retry(total=connect_retries, connect=connect_retries, read=0, status=0,
                      other=0, backoff_factor=0.1, raise_on_status=False)
        self._client = PrometheusConnect(url=self.url, retry=retry, timeout=self._timeout_s)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Metrics port ------------------------------------------------------------------------
    def available(self) -> bool:
        try:
            self._server_time()
        except TransientError:
            return False
        return True

    def telemetry(self) -> FleetTelemetry:
        """One reading at the server's instant; ``NoDataError`` when it holds none."""
        at = self._server_time()
        self._check_current(at)
        gpus, gpu_pods = self._gpus(at)
        deployments, node_qps, pod_qps = self._deployments(at)
        if not gpus and not deployments:  # the series went away while this read them
            raise NoDataError(self._nothing_scraped())
        attributed = attribute_gpus(gpus, gpu_pods=gpu_pods,
                                    servers={p for d in deployments for p in d.pods},
                                    pod_qps=pod_qps, node_qps=node_qps,
                                    idle_memory_mib=self._idle_memory_mib)
        deployments = with_nodes(deployments, attributed)
        catalog = self._settings.catalog
        throughput = {t: catalog.throughput(t) for t in catalog.types}
        return FleetTelemetry(timestamp=at, gpus=attributed, deployments=deployments,
                              totals=fleet_totals(attributed, deployments,
                                                  throughput=throughput,
                                                  default_source=SUCCESS_FROM_ENGINE),
                              source="prometheus")

    def query(self, expr: str, *, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """One instant query, as (labels, value) pairs; ``TransientError`` on failure."""
        return [(dict(s.labels), s.value) for s in self._query(expr, at=at)]

    def query_range(self, expr: str, *, start: float, end: float, step: float
                    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """One range query (``/api/v1/query_range``), as (labels, [(ts, value)]) per
        series; ``TransientError`` on failure (``range_series`` sizes the step)."""
        try:
            result = self._client.custom_query_range(
                query=expr, start_time=datetime.fromtimestamp(start, UTC),
                end_time=datetime.fromtimestamp(end, UTC), step=f"{step:g}s")
            return [(dict(r.get("metric", {})), [(float(t), float(v)) for t, v in r["values"]])
                    for r in result]
        except (requests.RequestException, PrometheusApiClientException, ValueError,
                KeyError, TypeError, AttributeError) as exc:
            raise _unavailable(exc, url=self.display_url, timeout_s=self._timeout_s) from exc

    def range_series(self, metric: str, *, start: float, end: float,
                     step: float | None = None, max_points: int = 500
                     ) -> list[tuple[float, float]]:
        """A fleet chart's (ts, value) points, step sized to the range and capped."""
        return range_series(self, metric, start=start, end=end, step=step,
                            max_points=max_points)

    # -- no data -----------------------------------------------------------------------------
    def _nothing_scraped(self) -> str:
        return (f"Prometheus at {self.display_url} answers but holds no dcgm-exporter or "
                "vLLM series: it scrapes none of the fleet's exporters, or they serve "
                f"empty pages (see {self.display_url}/targets)")

    def _check_current(self, at: float) -> None:
        """``NoDataError`` unless some family has series and each family present has a
        sample newer than ``max_sample_age_s``."""
        newest: dict[str, float] = {}
        for family, names in _FAMILIES:
            rows = self._query(newest_sample_expr(names), at=at)
            if rows and math.isfinite(rows[0].value):
                newest[family] = rows[0].value
        if not newest:
            raise NoDataError(self._nothing_scraped())
        for family, ts in newest.items():
            age = at - ts
            if age > self._max_age_s:
                raise NoDataError(
                    f"the newest {family} sample in Prometheus at {self.display_url} is "
                    f"{age:.0f} s old (more than {self._max_age_s:g} s): its scrapes of "
                    f"{family} have stopped (see {self.display_url}/targets)")

    # -- queries -----------------------------------------------------------------------------
    def _call(self, expr: str, at: float | None) -> Any:
        params = {} if at is None else {"time": f"{at:.3f}"}
        try:
            return self._client.custom_query(query=expr, params=params)
        except (requests.RequestException, PrometheusApiClientException, ValueError,
                KeyError, TypeError, AttributeError) as exc:
            raise _unavailable(exc, url=self.display_url, timeout_s=self._timeout_s) from exc

    def _server_time(self) -> float:
        result = self._call("time()", None)
        try:
            return float(result[1])  # a scalar result: [evaluation time, "value"]
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise _unavailable(exc, url=self.display_url, timeout_s=self._timeout_s) from exc

    def _query(self, expr: str, *, at: float | None) -> list[_Sample]:
        result = self._call(expr, at)
        try:
            return [_Sample(labels=dict(r.get("metric", {})), value=float(r["value"][1]))
                    for r in result]
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise _unavailable(exc, url=self.display_url, timeout_s=self._timeout_s) from exc

    def _node_of(self, labels: Mapping[str, str]) -> str:
        for name in self._host_labels:
            if labels.get(name):
                return labels[name]
        instance = labels.get("instance", "")
        return urlsplit(f"//{instance}").hostname or instance

    def _gpus(self, at: float) -> tuple[list[GpuTelemetry], dict[GpuKey, set[str]]]:
        """Every GPU (every MIG instance apart), and the pods dcgm-exporter maps to each."""
        names = "|".join(n.removeprefix("DCGM_FI_DEV_") for n in _DCGM)
        selector = f'{{__name__=~"DCGM_FI_DEV_({names})"}}'
        where = (*self._host_labels, "instance", "gpu", _MIG_LABEL)
        by = ", ".join(("__name__", *where, *_UUID_LABELS, "modelName"))
        # One query for all six series keeps the values of a GPU from one evaluation;
        # grouping on both spellings keeps series of mixed exporter versions; grouping
        # without the pod labels folds the per-pod copies of a shared GPU into one.
        values: dict[GpuKey, dict[str, float]] = defaultdict(dict)
        info: dict[GpuKey, tuple[str, str]] = {}
        for s in self._query(f"max by ({by}) ({selector})", at=at):
            key = self._gpu_key(s.labels)
            if key is None:
                continue  # not a per-GPU series
            values[key][s.labels.get("__name__", "")] = s.value
            uuid = next((s.labels[n] for n in _UUID_LABELS if s.labels.get(n)), "")
            if key not in info or not info[key][0]:
                info[key] = (uuid, s.labels.get("modelName", ""))
        pods: dict[GpuKey, set[str]] = defaultdict(set)
        mapping = ", ".join((*where, "pod", "namespace", "exported_pod", "exported_namespace"))
        for s in self._query(f"group by ({mapping}) (DCGM_FI_DEV_FB_USED)", at=at):
            key, pod = self._gpu_key(s.labels), mapped_pod(s.labels)
            if key is not None and pod is not None:
                pods[key].add(pod)
        catalog = self._settings.catalog
        gpus = []
        for (node, index, mig), v in sorted(values.items()):
            uuid, model_name = info[(node, index, mig)]
            util = v.get("DCGM_FI_DEV_GPU_UTIL", 0.0) / 100.0
            used = v.get("DCGM_FI_DEV_FB_USED", 0.0)
            free = v.get("DCGM_FI_DEV_FB_FREE", 0.0)
            reserved = v.get("DCGM_FI_DEV_FB_RESERVED", 0.0)
            gpus.append(GpuTelemetry(
                node=node, gpu_index=index, gpu_type=gpu_type_of(model_name, catalog),
                uuid=uuid, utilization=min(1.0, max(0.0, util)) if math.isfinite(util) else 0.0,
                power_w=v.get("DCGM_FI_DEV_POWER_USAGE", 0.0),
                memory_used_mib=round(used), memory_total_mib=round(used + free + reserved),
                memory_reserved_mib=round(reserved),
                energy_j=v.get("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 0.0) / 1000.0,
                mig_instance=mig))
        return gpus, dict(pods)

    def _gpu_key(self, labels: Mapping[str, str]) -> GpuKey | None:
        try:
            index = int(labels.get("gpu", ""))
        except ValueError:
            return None
        return (self._node_of(labels), index, labels.get(_MIG_LABEL, ""))

    def _key(self, labels: Mapping[str, str]) -> DeploymentKey:
        return (labels.get("namespace") or self._default_namespace, labels.get("model_name", ""))

    def _by_deployment(self, expr: str, at: float) -> dict[DeploymentKey, float]:
        out: dict[DeploymentKey, float] = defaultdict(float)
        for s in self._query(expr, at=at):
            out[self._key(s.labels)] += s.value
        return dict(out)

    def _deployments(self, at: float) -> tuple[tuple[DeploymentTelemetry, ...],
                                                dict[str, float], dict[str, float]]:
        """The deployments, and QPS over 1 m per node (``node`` label) and per pod."""
        dep = "model_name, namespace"
        node = self._node_label
        total = vllm_series("request_success_total")
        ok = vllm_series("request_success_total", f'finished_reason=~"{SUCCESS_REASONS}"')
        e2e_bucket = vllm_series("e2e_request_latency_seconds_bucket")
        e2e_sum = vllm_series("e2e_request_latency_seconds_sum")
        e2e_count = vllm_series("e2e_request_latency_seconds_count")
        ttft_bucket = vllm_series("time_to_first_token_seconds_bucket")

        # QPS over 1m per (deployment, pod, node): the split feeds per-node/GPU figures.
        qps_1m: dict[DeploymentKey, float] = defaultdict(float)
        node_rate: dict[tuple[DeploymentKey, str], float] = defaultdict(float)
        pod_rate: dict[tuple[DeploymentKey, str], float] = defaultdict(float)
        for s in self._query(f"sum by ({dep}, pod, {node}) (rate({total}[1m]))", at=at):
            key = self._key(s.labels)
            qps_1m[key] += s.value
            if s.labels.get(node):
                node_rate[(key, s.labels[node])] += s.value
            if s.labels.get("pod"):
                pod_rate[(key, f"{key[0]}/{s.labels['pod']}")] += s.value
        qps = {"1m": dict(qps_1m)}
        for w in _QPS_WINDOWS[1:]:
            qps[w] = self._by_deployment(f"sum by ({dep}) (rate({total}[{w}]))", at)
        ok_5m = self._by_deployment(f"sum by ({dep}) (rate({ok}[5m]))", at)
        p99 = self._by_deployment(
            f"histogram_quantile(0.99, sum by ({dep}, le) (rate({e2e_bucket}[5m])))", at)
        mean = self._by_deployment(
            f"sum by ({dep}) (rate({e2e_sum}[5m])) / sum by ({dep}) (rate({e2e_count}[5m]))",
            at)
        ttft_p50 = self._by_deployment(
            f"histogram_quantile(0.5, sum by ({dep}, le) (rate({ttft_bucket}[5m])))", at)
        waiting = self._by_deployment(
            f"sum by ({dep}) ({vllm_series('num_requests_waiting')})", at)
        tokens = self._by_deployment(
            f"sum by ({dep}) (rate({vllm_series('generation_tokens_total')}[1m]))", at)

        # Running, summed over engines per server: replicas are servers (pods), not engines.
        running: dict[DeploymentKey, float] = defaultdict(float)
        replicas: dict[DeploymentKey, set[str]] = defaultdict(set)
        pods: dict[DeploymentKey, set[str]] = defaultdict(set)
        nodes: dict[DeploymentKey, set[str]] = defaultdict(set)
        for s in self._query(f"sum by ({dep}, pod, instance, {node}) "
                             f"({vllm_series('num_requests_running')})", at=at):
            key = self._key(s.labels)
            running[key] += s.value
            pod = s.labels.get("pod")
            replicas[key].add(f"pod/{pod}" if pod else f"instance/{s.labels.get('instance')}")
            if pod:
                pods[key].add(f"{key[0]}/{pod}")
            if s.labels.get(node):
                nodes[key].add(s.labels[node])
        for key, n in node_rate:
            nodes[key].add(n)

        gateway = self._gateway(at)
        counters = self._counters(at, gateway=gateway)
        # Deployments reporting now: rate() still sees a vanished series for a window
        # after its staleness marker, instant selectors do not.
        keys = set(counters) | set(running) | set(waiting)
        out = []
        node_qps: dict[str, float] = defaultdict(float)
        pod_qps: dict[str, float] = {}
        for key in sorted(keys):
            namespace, model = key
            gw = gateway.get(key)
            rates = {w: gw.get(w, 0.0) if gw else qps[w].get(key, 0.0) for w in _QPS_WINDOWS}
            ok_rate = gw["ok_5m"] if gw else ok_5m.get(key, 0.0)
            # A gateway sees every request; vLLM's per-pod rates say how they split.
            scale = rates["1m"] / qps_1m[key] if qps_1m.get(key) else 0.0
            for (k, n), r in node_rate.items():
                if k == key:
                    node_qps[n] += r * scale
            for (k, p), r in pod_rate.items():
                if k == key:
                    pod_qps[p] = r * scale
            p99_s = _finite(p99.get(key, math.nan))
            mean_s = _finite(mean.get(key, math.nan))
            ttft_s = _finite(ttft_p50.get(key, math.nan))
            out.append(DeploymentTelemetry(
                model=model, namespace=namespace, replicas=len(replicas.get(key, ())),
                qps_1m=rates["1m"], qps_5m=rates["5m"], qps_15m=rates["15m"],
                qps_1h=rates["1h"],
                success_rate=(min(1.0, ok_rate / rates["5m"]) if rates["5m"] > 0 else None),
                p99_latency_ms=None if p99_s is None else p99_s * 1000.0,
                mean_latency_ms=None if mean_s is None else mean_s * 1000.0,
                ttft_p50_ms=None if ttft_s is None else ttft_s * 1000.0,
                queue_waiting=round(waiting.get(key, 0.0)), running=round(running.get(key, 0.0)),
                tokens_per_s=tokens.get(key, 0.0), nodes=tuple(sorted(nodes.get(key, ()))),
                counters=counters.get(key), pods=tuple(sorted(pods.get(key, ()))),
                success_source=SUCCESS_FROM_GATEWAY if gw else SUCCESS_FROM_ENGINE))
        return tuple(out), dict(node_qps), pod_qps

    def _gateway(self, at: float) -> dict[DeploymentKey, dict[str, float]]:
        """Per deployment: the gateway's request rates (keys ``1m`` … ``1h``, ``ok_5m``) and
        raw counts (``requests_total``, ``failed_total``); {} where no gateway is scraped."""
        model = self._gateway_model_label
        by = f"namespace, exported_namespace, {model}, status"
        out: dict[DeploymentKey, dict[str, float]] = defaultdict(lambda: defaultdict(float))

        def read(expr: str, field: str) -> None:
            for s in self._query(f"sum by ({by}) ({expr})", at=at):
                if not s.labels.get(model):
                    continue
                namespace = (s.labels.get("exported_namespace") or s.labels.get("namespace")
                             or self._default_namespace)
                row = out[(namespace, s.labels[model])]
                failed = re.fullmatch(GATEWAY_FAILED, s.labels.get("status", "")) is not None
                row[field] += s.value
                if field == "5m" and not failed:
                    row["ok_5m"] += s.value
                if field == "requests_total" and failed:
                    row["failed_total"] += s.value

        for w in _QPS_WINDOWS:
            read(f"rate({GATEWAY_REQUESTS}[{w}])", w)
        read(GATEWAY_REQUESTS, "requests_total")
        return {k: dict(v) for k, v in out.items()}

    def _counters(self, at: float, *, gateway: Mapping[DeploymentKey, Mapping[str, float]]
                  ) -> dict[DeploymentKey, DeploymentCounters]:
        """Raw counters; requests and failures from the gateway where it counts them."""
        dep = "model_name, namespace"
        reasons: dict[DeploymentKey, dict[str, float]] = defaultdict(dict)
        total = vllm_series("request_success_total")
        for s in self._query(f"sum by ({dep}, finished_reason) ({total})", at=at):
            reasons[self._key(s.labels)][s.labels.get("finished_reason", "")] = s.value
        names = ("(prompt_tokens_total|generation_tokens_total"
                 "|e2e_request_latency_seconds_sum|time_to_first_token_seconds_sum"
                 "|inter_token_latency_seconds_sum|time_per_output_token_seconds_sum)")
        totals: dict[DeploymentKey, dict[str, float]] = defaultdict(dict)
        for s in self._query(f'sum by (__name__, {dep}) ({{__name__=~"vllm[:_]{names}"}})',
                             at=at):
            name = _vllm_name(s.labels.get("__name__", ""))
            totals[self._key(s.labels)][name] = s.value
        buckets: dict[str, dict[DeploymentKey, dict[str, float]]] = {}
        for metric in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
                       *ITL_METRICS):
            per: dict[DeploymentKey, dict[str, float]] = defaultdict(dict)
            selector = vllm_series(metric.removeprefix("vllm:") + "_bucket")
            for s in self._query(f"sum by ({dep}, le) ({selector})", at=at):
                per[self._key(s.labels)][s.labels.get("le", "+Inf")] = s.value
            buckets[metric] = per
        out = {}
        for key, by_reason in reasons.items():
            requests_total = round(sum(by_reason.values()))
            success = round(sum(v for r, v in by_reason.items()
                                if re.fullmatch(SUCCESS_REASONS, r)))
            gw = gateway.get(key)
            if gw is not None and "requests_total" in gw:
                requests_total = round(gw["requests_total"])
                success = requests_total - round(gw.get("failed_total", 0.0))
            t = totals.get(key, {})
            out[key] = DeploymentCounters(
                requests_total=requests_total, success_total=success,
                failure_total=requests_total - success,
                prompt_tokens_total=round(t.get("vllm:prompt_tokens_total", 0.0)),
                generation_tokens_total=round(t.get("vllm:generation_tokens_total", 0.0)),
                e2e_latency=histogram_of(
                    buckets["vllm:e2e_request_latency_seconds"].get(key, {}),
                    default_bounds=E2E_LATENCY_BUCKETS_S,
                    total_sum=t.get("vllm:e2e_request_latency_seconds_sum", 0.0)),
                ttft=histogram_of(
                    buckets["vllm:time_to_first_token_seconds"].get(key, {}),
                    default_bounds=TTFT_BUCKETS_S,
                    total_sum=t.get("vllm:time_to_first_token_seconds_sum", 0.0)),
                itl=itl_of(buckets, t, key))
        return out
