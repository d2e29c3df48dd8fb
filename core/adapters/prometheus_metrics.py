"""The ``Metrics`` port read from a real Prometheus (dcgm-exporter and vLLM series).

Why: in production the console and the controller read the same telemetry the
twin produces, from the Prometheus that scrapes the fleet's exporters
(SPEC §3.5). This module is the only one that imports ``prometheus_api_client``;
its results never leave it: callers get ``FleetTelemetry``.

What it reads, all PromQL evaluated at ONE instant (the server's ``time()``,
read first), so one reading never mixes two moments:

- per GPU (dcgm-exporter): ``DCGM_FI_DEV_GPU_UTIL`` ÷ 100 → 0..1,
  ``DCGM_FI_DEV_POWER_USAGE`` (W), ``DCGM_FI_DEV_FB_USED`` and ``…_FB_FREE``
  (MiB; total = used + free), ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ →
  J). The node is the ``Hostname`` label, or ``hostname`` (dcgm-exporter
  versions differ), or the host of ``instance``; both spellings are grouped
  on in one query and merged here, so a fleet mixing versions reads as one.
- per deployment (vLLM, keyed by ``model_name`` and ``namespace``): QPS =
  ``rate(vllm:request_success_total[w])`` summed over every finish reason for
  w = 1m/5m/15m/1h (that counter counts EVERY finished request; see
  deploy/prometheus/rules.yml); success rate = the ``stop|length`` share over
  5m; p99 and mean e2e latency and p50 TTFT from the histograms over 5m; queue
  waiting/running summed over replicas; generation tokens/s over 1m; raw
  counters. Replicas = series of ``vllm:num_requests_running`` (one per pod);
  every vLLM selector also matches the ``vllm_…`` spelling (see ``vllm_series``);
  nodes come from the ``node`` label (``node_label``) when the scrape config
  adds it (``__meta_kubernetes_pod_node_name``).

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
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from core.adapters.errors import innermost_reason
from core.adapters.settings_source import load_settings
from core.catalog import Catalog
from core.errors import TransientError, ValidationError
from core.redact import redact_text, redact_url
from core.settings import Settings
from core.telemetry import (
    E2E_LATENCY_BUCKETS_S,
    TTFT_BUCKETS_S,
    DeploymentCounters,
    DeploymentTelemetry,
    FleetTelemetry,
    FleetTotals,
    GpuTelemetry,
    Histogram,
    NoDataError,
)

SUCCESS_REASONS = "stop|length"
_HOST_LABELS = ("Hostname", "hostname")
_DCGM = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED",
         "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
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


def _histogram(cumulative: Mapping[str, float], *, default_bounds: tuple[float, ...],
               total_sum: float) -> Histogram:
    """Per-bucket counts from Prometheus' cumulative ``le`` buckets."""
    if not cumulative:
        return Histogram(default_bounds, (0,) * (len(default_bounds) + 1), 0.0)
    points = sorted((float(le), value) for le, value in cumulative.items())
    if not math.isinf(points[-1][0]):
        points.append((math.inf, points[-1][1]))
    bounds = tuple(le for le, _ in points[:-1])
    counts: list[int] = []
    previous = 0.0
    for _, value in points:
        counts.append(max(0, round(value - previous)))
        previous = max(previous, value)
    return Histogram(bounds, tuple(counts), total_sum)


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
    ) -> None:
        """``url``: Prometheus' base URL. ``hostname_label``: the node label to prefer
        when a series carries both spellings (``None``: ``Hostname``, then
        ``hostname``). ``settings``: the catalog that names GPU types and their throughput
        (default: ``load_settings()``). ``idle_memory_mib``: framebuffer use above which
        a GPU counts as hosting a model server when a node's QPS is split over its GPUs.
        ``max_sample_age_s``: a family whose newest sample is older reads as no data."""
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
        gpus = self._gpus(at)
        deployments, node_qps = self._deployments(at)
        if not gpus and not deployments:  # the series went away while this read them
            raise NoDataError(self._nothing_scraped())
        gpus = self._attribute_qps(gpus, node_qps)
        return FleetTelemetry(timestamp=at, gpus=gpus, deployments=deployments,
                              totals=self._totals(gpus, deployments),
                              source="prometheus")

    def query(self, expr: str, *, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """One instant query, as (labels, value) pairs; ``TransientError`` on failure."""
        return [(dict(s.labels), s.value) for s in self._query(expr, at=at)]

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

    def _gpus(self, at: float) -> list[GpuTelemetry]:
        names = "|".join(n.removeprefix("DCGM_FI_DEV_") for n in _DCGM)
        by = ", ".join(("__name__", *self._host_labels, "instance", "gpu", "UUID", "modelName"))
        # One query for all five series keeps the five values of a GPU from one evaluation;
        # grouping on both host label spellings keeps series of mixed exporter versions.
        expr = f'max by ({by}) ({{__name__=~"DCGM_FI_DEV_({names})"}})'
        values: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        info: dict[tuple[str, int], tuple[str, str]] = {}
        for s in self._query(expr, at=at):
            try:
                index = int(s.labels.get("gpu", ""))
            except ValueError:
                continue  # not a per-GPU series
            key = (self._node_of(s.labels), index)
            values[key][s.labels.get("__name__", "")] = s.value
            if key not in info or not info[key][0]:
                info[key] = (s.labels.get("UUID", ""), s.labels.get("modelName", ""))
        catalog = self._settings.catalog
        gpus = []
        for (node, index), v in sorted(values.items()):
            uuid, model_name = info[(node, index)]
            util = v.get("DCGM_FI_DEV_GPU_UTIL", 0.0) / 100.0
            used = v.get("DCGM_FI_DEV_FB_USED", 0.0)
            free = v.get("DCGM_FI_DEV_FB_FREE", 0.0)
            gpus.append(GpuTelemetry(
                node=node, gpu_index=index, gpu_type=gpu_type_of(model_name, catalog),
                uuid=uuid, utilization=min(1.0, max(0.0, util)) if math.isfinite(util) else 0.0,
                power_w=v.get("DCGM_FI_DEV_POWER_USAGE", 0.0),
                memory_used_mib=round(used), memory_total_mib=round(used + free),
                energy_j=v.get("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 0.0) / 1000.0))
        return gpus

    def _key(self, labels: Mapping[str, str]) -> DeploymentKey:
        return (labels.get("namespace") or self._default_namespace, labels.get("model_name", ""))

    def _by_deployment(self, expr: str, at: float) -> dict[DeploymentKey, float]:
        out: dict[DeploymentKey, float] = defaultdict(float)
        for s in self._query(expr, at=at):
            out[self._key(s.labels)] += s.value
        return dict(out)

    def _deployments(self, at: float) -> tuple[tuple[DeploymentTelemetry, ...],
                                                dict[str, float]]:
        dep = "model_name, namespace"
        node = self._node_label
        total = vllm_series("request_success_total")
        ok = vllm_series("request_success_total", f'finished_reason=~"{SUCCESS_REASONS}"')
        e2e_bucket = vllm_series("e2e_request_latency_seconds_bucket")
        e2e_sum = vllm_series("e2e_request_latency_seconds_sum")
        e2e_count = vllm_series("e2e_request_latency_seconds_count")
        ttft_bucket = vllm_series("time_to_first_token_seconds_bucket")

        # QPS over 1m per (deployment, node): the node split feeds per-node/GPU figures.
        qps_1m: dict[DeploymentKey, float] = defaultdict(float)
        node_qps: dict[str, float] = defaultdict(float)
        nodes: dict[DeploymentKey, set[str]] = defaultdict(set)
        for s in self._query(f"sum by ({dep}, {node}) (rate({total}[1m]))", at=at):
            key = self._key(s.labels)
            qps_1m[key] += s.value
            if s.labels.get(node):
                node_qps[s.labels[node]] += s.value
                nodes[key].add(s.labels[node])
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

        # Running: raw series, one per model-server pod → replicas and nodes.
        running: dict[DeploymentKey, float] = defaultdict(float)
        pods: dict[DeploymentKey, set[str]] = defaultdict(set)
        for i, s in enumerate(self._query(vllm_series("num_requests_running"), at=at)):
            key = self._key(s.labels)
            running[key] += s.value
            pods[key].add(s.labels.get("pod") or f"series-{i}")
            if s.labels.get(node):
                nodes[key].add(s.labels[node])

        counters = self._counters(at)
        # Deployments reporting now: rate() still sees a vanished series for a window
        # after its staleness marker, instant selectors do not.
        keys = set(counters) | set(running) | set(waiting)
        out = []
        for key in sorted(keys):
            namespace, model = key
            total_5m = qps["5m"].get(key, 0.0)
            p99_s = _finite(p99.get(key, math.nan))
            mean_s = _finite(mean.get(key, math.nan))
            ttft_s = _finite(ttft_p50.get(key, math.nan))
            out.append(DeploymentTelemetry(
                model=model, namespace=namespace, replicas=len(pods.get(key, ())),
                qps_1m=qps["1m"].get(key, 0.0), qps_5m=total_5m,
                qps_15m=qps["15m"].get(key, 0.0), qps_1h=qps["1h"].get(key, 0.0),
                success_rate=(min(1.0, ok_5m.get(key, 0.0) / total_5m)
                              if total_5m > 0 else None),
                p99_latency_ms=None if p99_s is None else p99_s * 1000.0,
                mean_latency_ms=None if mean_s is None else mean_s * 1000.0,
                ttft_p50_ms=None if ttft_s is None else ttft_s * 1000.0,
                queue_waiting=round(waiting.get(key, 0.0)), running=round(running.get(key, 0.0)),
                tokens_per_s=tokens.get(key, 0.0), nodes=tuple(sorted(nodes.get(key, ()))),
                counters=counters.get(key)))
        return tuple(out), dict(node_qps)

    def _counters(self, at: float) -> dict[DeploymentKey, DeploymentCounters]:
        dep = "model_name, namespace"
        reasons: dict[DeploymentKey, dict[str, float]] = defaultdict(dict)
        total = vllm_series("request_success_total")
        for s in self._query(f"sum by ({dep}, finished_reason) ({total})", at=at):
            reasons[self._key(s.labels)][s.labels.get("finished_reason", "")] = s.value
        names = ("(prompt_tokens_total|generation_tokens_total"
                 "|e2e_request_latency_seconds_sum|time_to_first_token_seconds_sum)")
        totals: dict[DeploymentKey, dict[str, float]] = defaultdict(dict)
        for s in self._query(f'sum by (__name__, {dep}) ({{__name__=~"vllm[:_]{names}"}})',
                             at=at):
            name = _vllm_name(s.labels.get("__name__", ""))
            totals[self._key(s.labels)][name] = s.value
        buckets: dict[str, dict[DeploymentKey, dict[str, float]]] = {}
        for metric in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds"):
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
            t = totals.get(key, {})
            out[key] = DeploymentCounters(
                requests_total=requests_total, success_total=success,
                failure_total=requests_total - success,
                prompt_tokens_total=round(t.get("vllm:prompt_tokens_total", 0.0)),
                generation_tokens_total=round(t.get("vllm:generation_tokens_total", 0.0)),
                e2e_latency=_histogram(
                    buckets["vllm:e2e_request_latency_seconds"].get(key, {}),
                    default_bounds=E2E_LATENCY_BUCKETS_S,
                    total_sum=t.get("vllm:e2e_request_latency_seconds_sum", 0.0)),
                ttft=_histogram(
                    buckets["vllm:time_to_first_token_seconds"].get(key, {}),
                    default_bounds=TTFT_BUCKETS_S,
                    total_sum=t.get("vllm:time_to_first_token_seconds_sum", 0.0)))
        return out

    # -- assembly ----------------------------------------------------------------------------
    def _attribute_qps(self, gpus: Iterable[GpuTelemetry], node_qps: Mapping[str, float]
                       ) -> tuple[GpuTelemetry, ...]:
        """Per-GPU QPS: a node's QPS (from the ``node`` label) split evenly over its GPUs
        that hold a model server (all its GPUs when none shows one); 0 without the label."""
        gpus = list(gpus)
        by_node: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(gpus):
            by_node[g.node].append(i)
        out = list(gpus)
        for node, rows in by_node.items():
            q = node_qps.get(node, 0.0)
            if q <= 0:
                continue
            hosting = [i for i in rows if gpus[i].memory_used_mib > self._idle_memory_mib]
            share = hosting or rows
            for i in share:
                g = gpus[i]
                out[i] = GpuTelemetry(
                    node=g.node, gpu_index=g.gpu_index, gpu_type=g.gpu_type, uuid=g.uuid,
                    utilization=g.utilization, power_w=g.power_w,
                    memory_used_mib=g.memory_used_mib, memory_total_mib=g.memory_total_mib,
                    energy_j=g.energy_j, healthy=g.healthy, qps_1m=q / len(share))
        return tuple(out)

    def _totals(self, gpus: Iterable[GpuTelemetry], deployments: Iterable[DeploymentTelemetry]
                ) -> FleetTotals:
        catalog = self._settings.catalog
        power = 0.0
        delivered = 0.0
        for g in gpus:
            power += g.power_w
            if g.gpu_type in catalog.types:
                delivered += catalog.throughput(g.gpu_type) * g.utilization
        deployments = list(deployments)
        total_5m = sum(d.qps_5m for d in deployments)
        ok_5m = sum(d.qps_5m * d.success_rate for d in deployments
                    if d.success_rate is not None)
        return FleetTotals(
            qps=sum(d.qps_1m for d in deployments), power_w=power,
            tops_per_w=delivered / power if power > 0 else 0.0,
            success_rate=min(1.0, ok_5m / total_5m) if total_5m > 0 else None,
            queue_waiting=sum(d.queue_waiting for d in deployments))
