"""The shipped recording rules give the right series whether or not the scrape relabels.

prometheus-client (as vLLM uses it) writes ``vllm:`` names as ``vllm_`` when a
Prometheus 2.x negotiates OpenMetrics (client_python#1177). Here a real
Prometheus on loopback, with temporary storage and the shipped
``deploy/prometheus/rules.yml`` (group intervals cut to 1 s, expressions
untouched), scrapes two small vLLM-shaped expositions served by
prometheus-client's own HTTP server (its real content negotiation):

- job ``relabelled``: with scrape-example.yml's ``vllm_(.+)`` -> ``vllm:$1``
  metric relabel, so Prometheus stores colon names;
- job ``escaped``: without it, so Prometheus stores the escaped names, as behind
  a default ServiceMonitor or PodMonitor.

Each target gets ``namespace`` and ``pod`` as target labels, as Kubernetes
service discovery would set them (vLLM writes neither), and both serve the same
model name, so the rules must also keep the two namespaces apart. Counters grow
linearly with wall time, so the success ratio, the p99 latency and the queue are
exact, and the QPS equals the same ``rate`` computed over one spelling only.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tests.conftest import require_binary
from tests.integration.test_prometheus import (
    _free_port,
    _ready,
    _rules_every_second,
    _stop_process,
    _wait_until,
)

pytestmark = pytest.mark.integration

MODEL = "llama-3-8b"
STOP_PER_S = 30.0  # finished_reason="stop"
ERROR_PER_S = 10.0  # finished_reason="error": success ratio 0.75
WAITING = {"relabelled": 3.0, "escaped": 5.0}
# Latency observations per second at or below each bound: p99 lies in (1, 2] -> 1.75.
BUCKETS = (("0.5", 20.0), ("1.0", 38.4), ("2.0", 40.0), ("+Inf", 40.0))
MIN_SCRAPES = 8


class VllmShaped(Collector):
    """vLLM V1's names (with the colon), counters linear in wall time from ``t0``."""

    def __init__(self, *, waiting: float) -> None:
        self._t0 = time.time()
        self._waiting = waiting
        self.collected = 0

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self.collected += 1
        elapsed = time.time() - self._t0
        success = CounterMetricFamily("vllm:request_success", "finished requests",
                                      labels=["model_name", "engine", "finished_reason"])
        success.add_metric([MODEL, "0", "stop"], STOP_PER_S * elapsed)
        success.add_metric([MODEL, "0", "error"], ERROR_PER_S * elapsed)
        success.add_metric([MODEL, "0", "abort"], 0.0)  # vLLM creates it, never counts it
        yield success
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "waiting",
                                    labels=["model_name", "engine"])
        waiting.add_metric([MODEL, "0"], self._waiting)
        yield waiting
        latency = HistogramMetricFamily("vllm:e2e_request_latency_seconds", "latency",
                                        labels=["model_name", "engine"])
        latency.add_metric([MODEL, "0"], [(le, per_s * elapsed) for le, per_s in BUCKETS],
                           sum_value=30.0 * elapsed)
        yield latency


@dataclass
class Scraped:
    url: str
    collectors: dict[str, VllmShaped]

    def query(self, expr: str, *, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        params = {"query": expr} if at is None else {"query": expr, "time": repr(at)}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5.0) as response:
            body: Any = json.load(response)
        assert body["status"] == "success", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def by_namespace(self, expr: str, *, at: float | None = None) -> dict[str, float]:
        out = {}
        for labels, value in self.query(expr, at=at):
            assert labels.get("model_name") == MODEL, labels
            out[labels["namespace"]] = value
        return out


def _config(tmp: Path, targets: dict[str, str]) -> Path:
    colon = {"source_labels": ["__name__"], "regex": "vllm_(.+)",
             "target_label": "__name__", "replacement": "vllm:$1"}
    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
                              / "scrape-example.yml").read_text("utf-8"))
    vllm_job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "vllm")
    assert vllm_job["metric_relabel_configs"] == [colon]  # the relabel tested is the shipped one

    def job(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"job_name": name, "static_configs": [
            {"targets": [targets[name]], "labels": {"namespace": name, "pod": f"{name}-0"}}]}
        if name == "relabelled":
            out["metric_relabel_configs"] = vllm_job["metric_relabel_configs"]
        return out

    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(_rules_every_second(tmp))],
        "scrape_configs": [job("relabelled"), job("escaped")],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = require_binary("prometheus", "Debian package prometheus")
    tmp = tmp_path_factory.mktemp("rules-scraped")
    collectors: dict[str, VllmShaped] = {}
    servers = []
    targets = {}
    try:
        for name, waiting in WAITING.items():
            registry = CollectorRegistry(auto_describe=False)
            collectors[name] = VllmShaped(waiting=waiting)
            registry.register(collectors[name])
            port = _free_port()
            server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
            servers.append(server)
            targets[name] = f"127.0.0.1:{port}"
        port = _free_port()
        log = tmp / "prometheus.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [binary, f"--config.file={_config(tmp, targets)}",
                 f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log_file, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_until(lambda: _ready(url, process), timeout_s=15,
                            what="prometheus to be ready", log=log)
                _wait_until(lambda: all(c.collected >= MIN_SCRAPES
                                        for c in collectors.values()),
                            timeout_s=20, what=f"{MIN_SCRAPES} scrapes of each", log=log)
                st = Scraped(url=url, collectors=collectors)
                _wait_until(lambda: len(st.by_namespace(
                    "namespace_model_name:vllm_requests:rate1m")) == 2,
                            timeout_s=10, what="the recorded QPS", log=log)
                yield st
            finally:
                _stop_process(process)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_prometheus_stored_one_spelling_per_job(scraped: Scraped) -> None:
    # The premise: without the relabel the names really arrive escaped.
    colon = {labels["job"] for labels, _ in scraped.query("vllm:request_success_total")}
    escaped = {labels["job"] for labels, _ in scraped.query("vllm_request_success_total")}
    assert (colon, escaped) == ({"relabelled"}, {"escaped"})


def test_every_shipped_rule_evaluates_without_error(scraped: Scraped) -> None:
    url = f"{scraped.url}/api/v1/rules"
    with urllib.request.urlopen(url, timeout=5.0) as response:
        groups = json.load(response)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 19
    assert all(r["health"] == "ok" for r in rules), \
        {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}


def test_recorded_qps_per_deployment_in_both_spellings(scraped: Scraped) -> None:
    (stamp,) = scraped.query("timestamp(fleet:vllm_requests:rate1m)")
    at = stamp[1]
    recorded = scraped.by_namespace("namespace_model_name:vllm_requests:rate1m", at=at)
    # Each equals rate() over its own spelling alone, at the same instant: nothing
    # missing, nothing counted twice.
    for namespace, name in (("relabelled", "vllm:request_success_total"),
                            ("escaped", "vllm_request_success_total")):
        (alone,) = scraped.query(
            f'sum(rate({name}{{namespace="{namespace}"}}[1m]))', at=at)
        assert recorded[namespace] == pytest.approx(alone[1], rel=1e-9)
        # A 1m window partly covered (a young Prometheus) reads less than the slope,
        # never more; with MIN_SCRAPES scrapes held, at least that share of it.
        total_per_s = STOP_PER_S + ERROR_PER_S
        assert total_per_s * (MIN_SCRAPES - 2) / 60 <= recorded[namespace] \
            <= total_per_s * 1.02
    (fleet,) = scraped.query("fleet:vllm_requests:rate1m", at=at)
    assert fleet[1] == pytest.approx(sum(recorded.values()), rel=1e-9)


def test_recorded_success_ratio_latency_and_queue_in_both_spellings(scraped: Scraped
                                                                    ) -> None:
    ratio = scraped.by_namespace("namespace_model_name:vllm_request_success:ratio_rate5m")
    assert ratio == pytest.approx({"relabelled": 0.75, "escaped": 0.75}, rel=1e-6)
    p99 = scraped.by_namespace("namespace_model_name:vllm_e2e_request_latency_seconds:p99_5m")
    assert p99 == pytest.approx({"relabelled": 1.75, "escaped": 1.75}, rel=1e-6)
    waiting = scraped.by_namespace("namespace_model_name:vllm_num_requests_waiting:sum")
    assert waiting == WAITING
    ((_, fleet_waiting),) = scraped.query("fleet:vllm_num_requests_waiting:sum")
    assert fleet_waiting == sum(WAITING.values())
    ((_, fleet_ratio),) = scraped.query("fleet:vllm_request_success:ratio_rate5m")
    assert fleet_ratio == pytest.approx(0.75, rel=1e-6)
