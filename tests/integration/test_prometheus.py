"""A real Prometheus scrapes the twin's exporter; the adapter reads back what the twin made.

One module-scoped stack on loopback: the twin on a manual clock, driven by a
background thread (5 simulated seconds every 0.25 s of real time), served by
``core.adapters.exporter``; a second tiny exporter that speaks an older
dcgm-exporter (lowercase ``hostname``) plus one vLLM server with a ``node``
label and underscore-escaped names; and the Debian ``prometheus`` binary
scraping both every second with the shipped ``deploy/prometheus/rules.yml``
loaded. The rule groups' 30 s intervals are rewritten to 1 s in a temporary
copy (expressions untouched) so the recorded series exist within the test's
time budget.

Values, not just answers: with the driver paused and two scrapes taken since,
Prometheus' per-GPU power, memory and energy and its per-model request
counters must equal the twin's exactly, and the adapter's QPS must equal the
counters' increase over the recorded scrapes, within PromQL's rate
extrapolation. Every wait is bounded and stops by itself.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import streamlit
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app import services
from core.adapters.exporter import ExporterHandle, serve_registry, start_exporter
from core.adapters.prometheus_metrics import PrometheusMetrics, gpu_type_of
from core.clock import ManualClock
from core.cost import fleet_cost, per_inference
from core.errors import TransientError
from core.monitor import qps_gate
from core.settings import Settings
from core.sim import faults
from core.sim.twin import Twin
from core.telemetry import FleetTelemetry, NoDataError, histogram_quantile
from tests.app.conftest import open_page
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES_YML = ROOT / "deploy" / "prometheus" / "rules.yml"
SIM_STEP_S = 5.0  # simulated seconds per driver tick
DRIVER_TICK_S = 0.25  # real seconds between driver ticks
MIN_SCRAPES = 6  # before the tests start: enough samples for rate()

LEGACY_NODE = "legacy-0"
LEGACY_MODEL = "legacy-model"
LEGACY_NAMESPACE = "batch"
LEGACY_POWER_W = 61.5
LEGACY_FB_USED = 500  # below the adapter's idle threshold: "hosting" comes from vLLM's node
LEGACY_FB_FREE = 40460
LEGACY_STEP = 10  # legacy requests finished per scrape


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str, *, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.load(response)


def _wait_until(check: Callable[[], bool], *, timeout_s: float, what: str,
                log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, TransientError, ValueError):
            pass  # not up yet
        time.sleep(0.1)
    tail = ""
    if log is not None and log.exists():
        tail = "\nprometheus log:\n" + log.read_text(errors="replace")[-3000:]
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{tail}")


class RecordingSource:
    """The twin as the exporter sees it; remembers (wall time, reading) of every scrape."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin
        self._lock = threading.Lock()
        self._scrapes: list[tuple[float, FleetTelemetry]] = []

    def available(self) -> bool:
        return self.twin.available()

    def telemetry(self) -> FleetTelemetry:
        started = time.time()
        tel = self.twin.telemetry()
        with self._lock:
            self._scrapes.append((started, tel))
        return tel

    @property
    def scrapes(self) -> list[tuple[float, FleetTelemetry]]:
        with self._lock:
            return list(self._scrapes)


class Driver(threading.Thread):
    """Advances the twin's manual clock so that counters move; pausable, stoppable."""

    def __init__(self, twin: Twin) -> None:
        super().__init__(name="twin-driver", daemon=True)
        self._twin = twin
        self._lock = threading.Lock()
        self._paused = False
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(DRIVER_TICK_S):
            with self._lock:
                if not self._paused:
                    self._twin.step(SIM_STEP_S)

    def pause(self) -> None:
        """Returns once no step is in progress and none will start."""
        with self._lock:
            self._paused = True

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5.0)


class LegacyCollector(Collector):
    """An older dcgm-exporter (lowercase ``hostname``) and a vLLM server with a ``node``
    label whose names reached Prometheus escaped (``vllm_…``: prometheus-client's
    OpenMetrics output to a Prometheus 2.x, client_python issue #1177)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished = 0

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            self.finished += LEGACY_STEP
            finished = self.finished
        names = ["gpu", "UUID", "device", "modelName", "hostname"]
        values = ["0", "GPU-legacy-0-0", "nvidia0", "NVIDIA A100-SXM4-40GB", LEGACY_NODE]
        for name, value in (("DCGM_FI_DEV_GPU_UTIL", 37.0),
                            ("DCGM_FI_DEV_POWER_USAGE", LEGACY_POWER_W),
                            ("DCGM_FI_DEV_FB_USED", float(LEGACY_FB_USED)),
                            ("DCGM_FI_DEV_FB_FREE", float(LEGACY_FB_FREE))):
            family = GaugeMetricFamily(name, name, labels=names)
            family.add_metric(values, value)
            yield family
        who = ["model_name", "namespace", "node"]
        ids = [LEGACY_MODEL, LEGACY_NAMESPACE, LEGACY_NODE]
        success = CounterMetricFamily("vllm_request_success", "finished requests",
                                      labels=[*who, "finished_reason"])
        success.add_metric([*ids, "stop"], float(finished))
        yield success
        running = GaugeMetricFamily("vllm_num_requests_running", "running", labels=who)
        running.add_metric(ids, 2.0)
        yield running
        waiting = GaugeMetricFamily("vllm_num_requests_waiting", "waiting", labels=who)
        waiting.add_metric(ids, 3.0)
        yield waiting


@dataclass
class Stack:
    url: str
    twin: Twin
    source: RecordingSource
    driver: Driver
    exporter: ExporterHandle
    legacy: ExporterHandle
    metrics: PrometheusMetrics
    log: Path

    def promql(self, expr: str) -> list[tuple[dict[str, str], float]]:
        return self.metrics.query(expr)


def _rules_every_second(tmp: Path) -> Path:
    rules = yaml.safe_load(RULES_YML.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        group["interval"] = "1s"
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def _config(tmp: Path, *, twin_target: str, legacy_target: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(_rules_every_second(tmp))],
        "scrape_configs": [
            {"job_name": "twin", "static_configs": [{"targets": [twin_target]}]},
            {"job_name": "legacy", "static_configs": [{"targets": [legacy_target]}]},
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_binary("prometheus", "Debian package prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    twin = Twin(settings, clock=ManualClock(time.time()))
    twin.inject(faults.error_spike("a100-2", rate=0.3))  # some failures to count
    twin.step(600)  # warm: counters well above zero before the first scrape
    source = RecordingSource(twin)
    legacy_registry = CollectorRegistry(auto_describe=False)
    legacy_registry.register(LegacyCollector())
    port = _free_port()
    log = tmp / "prometheus.log"
    with start_exporter(source) as exporter, \
            serve_registry(legacy_registry) as legacy, \
            log.open("wb") as log_file, \
            PrometheusMetrics(f"http://127.0.0.1:{port}", settings=settings,
                              timeout_s=2.0) as metrics:
        config = _config(tmp, twin_target=exporter.target, legacy_target=legacy.target)
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log_file, stderr=subprocess.STDOUT)
        driver = Driver(twin)
        driver.start()
        try:
            url = f"http://127.0.0.1:{port}"
            st = Stack(url=url, twin=twin, source=source, driver=driver, exporter=exporter,
                       legacy=legacy, metrics=metrics, log=log)

            def both_targets_up() -> bool:
                up = {labels["job"]: v for labels, v in st.promql("up")}
                return up == {"twin": 1.0, "legacy": 1.0}

            _wait_until(lambda: _ready(url, process), timeout_s=15,
                        what="prometheus to be ready", log=log)
            _wait_until(both_targets_up, timeout_s=10, what="both targets up", log=log)
            _wait_until(lambda: len(source.scrapes) >= MIN_SCRAPES, timeout_s=15,
                        what=f"{MIN_SCRAPES} scrapes", log=log)
            yield st
        finally:
            try:
                _stop_process(process)
            finally:
                driver.stop()


def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"prometheus exited with {process.returncode}")
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:  # refused while starting; URLError and HTTPError are OSErrors
        return False


@dataclass(frozen=True)
class Frozen:
    twin: FleetTelemetry  # the twin's reading while frozen (what the last scrapes saw)
    adapter: FleetTelemetry  # PrometheusMetrics.telemetry() while frozen
    scrapes: list[tuple[float, FleetTelemetry]]


@pytest.fixture(scope="module")
def frozen(stack: Stack) -> Frozen:
    """Pause the driver, then wait until Prometheus holds two scrapes taken since."""
    stack.driver.pause()
    paused_at = time.time()

    def scraped_since(after: float) -> bool:
        for metric in ("DCGM_FI_DEV_POWER_USAGE", "vllm:request_success_total"):
            rows = stack.promql(f'min(timestamp({metric}{{job="twin"}}))')
            if not rows or rows[0][1] <= after:
                return False
        return True

    _wait_until(lambda: scraped_since(paused_at), timeout_s=5, what="a scrape after pausing",
                log=stack.log)
    first_frozen = stack.source.scrapes[-1][0]
    _wait_until(lambda: scraped_since(first_frozen + 0.5), timeout_s=5,
                what="a second scrape after pausing", log=stack.log)
    return Frozen(twin=stack.twin.telemetry(), adapter=stack.metrics.telemetry(),
                  scrapes=stack.source.scrapes)


def _twin_gpus(tel: FleetTelemetry) -> list:
    return [g for g in tel.gpus if g.node != LEGACY_NODE]


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------
def test_prometheus_holds_the_twins_power_memory_and_energy(stack: Stack, frozen: Frozen
                                                           ) -> None:
    def per_gpu(metric: str) -> dict[str, float]:
        return {labels["Hostname"]: v
                for labels, v in stack.promql(f'{metric}{{job="twin"}}')}

    power, used = per_gpu("DCGM_FI_DEV_POWER_USAGE"), per_gpu("DCGM_FI_DEV_FB_USED")
    free, util = per_gpu("DCGM_FI_DEV_FB_FREE"), per_gpu("DCGM_FI_DEV_GPU_UTIL")
    energy = per_gpu("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert set(power) == {g.node for g in frozen.twin.gpus} and len(power) == 12
    for g in frozen.twin.gpus:
        assert power[g.node] == g.power_w
        assert used[g.node] == g.memory_used_mib
        assert free[g.node] == g.memory_free_mib
        assert util[g.node] == pytest.approx(g.utilization * 100, abs=1e-6)
        assert energy[g.node] == pytest.approx(g.energy_j * 1000, rel=1e-12)
    assert any(g.power_w > 100 and g.memory_used_mib > 0 for g in frozen.twin.gpus)


def test_prometheus_request_counters_equal_the_twins(stack: Stack, frozen: Frozen) -> None:
    total = {labels["model_name"]: v for labels, v in stack.promql(
        'sum by (model_name) (vllm:request_success_total{job="twin"})')}
    ok = {labels["model_name"]: v for labels, v in stack.promql(
        'sum by (model_name) (vllm:request_success_total{job="twin",'
        'finished_reason=~"stop|length"})')}
    assert set(total) == {d.model for d in frozen.twin.deployments}
    for d in frozen.twin.deployments:
        assert d.counters is not None
        assert total[d.model] == d.counters.requests_total
        assert ok[d.model] == d.counters.success_total
    assert sum(d.counters.failure_total for d in frozen.twin.deployments
               if d.counters is not None) > 0


def test_adapter_reads_the_twins_gpus(frozen: Frozen) -> None:
    got = {(g.node, g.gpu_index): g for g in _twin_gpus(frozen.adapter)}
    assert frozen.adapter.source == "prometheus"
    assert set(got) == {(g.node, g.gpu_index) for g in frozen.twin.gpus}
    for want in frozen.twin.gpus:
        g = got[(want.node, want.gpu_index)]
        assert (g.gpu_type, g.uuid) == (want.gpu_type, want.uuid)
        assert g.power_w == want.power_w
        assert g.utilization == pytest.approx(want.utilization, abs=1e-6)
        assert (g.memory_used_mib, g.memory_total_mib) == \
            (want.memory_used_mib, want.memory_total_mib)
        assert g.energy_j == pytest.approx(want.energy_j, rel=1e-9)
    assert frozen.adapter.totals.power_w == pytest.approx(
        sum(g.power_w for g in frozen.twin.gpus) + LEGACY_POWER_W, abs=1e-6)


def test_adapter_counters_equal_the_twins(frozen: Frozen) -> None:
    for want in frozen.twin.deployments:
        got = frozen.adapter.deployment(want.model, want.namespace)
        assert got.counters is not None and want.counters is not None
        c, w = got.counters, want.counters
        assert (c.requests_total, c.success_total, c.failure_total) == \
            (w.requests_total, w.success_total, w.failure_total)
        assert (c.prompt_tokens_total, c.generation_tokens_total) == \
            (w.prompt_tokens_total, w.generation_tokens_total)
        assert c.e2e_latency.bounds == w.e2e_latency.bounds
        assert c.e2e_latency.counts == w.e2e_latency.counts
        assert c.e2e_latency.sum == pytest.approx(w.e2e_latency.sum, rel=1e-9)
        assert c.ttft.counts == w.ttft.counts
        assert got.queue_waiting == want.queue_waiting
        assert got.running == want.running


def _increase(scrapes: list[tuple[float, FleetTelemetry]], model: str, *, since: float,
              field: Callable[[Any], float]) -> tuple[float, float, int]:
    """(counter increase, seconds between first and last sample, samples) after ``since``."""
    points = [(t, field(tel.deployment(model).counters)) for t, tel in scrapes if t > since]
    return points[-1][1] - points[0][1], points[-1][0] - points[0][0], len(points)


def _rate_bounds(scrapes: list[tuple[float, FleetTelemetry]], *, window: int, at: float,
                 count: Callable[[FleetTelemetry], float]) -> tuple[float, float]:
    """Where PromQL's ``rate(c[window])`` at ``at`` must lie, from the scraped counters.

    rate = increase over the samples × (span + extrapolation) / span / window, where
    the extrapolation adds half an interval at the start (the series starts inside the
    window) and at most 1.1 intervals at the end; 2 % slack for timestamp jitter.
    """
    points = [(t, count(tel)) for t, tel in scrapes if at - window < t <= at + 0.1]
    assert len(points) >= MIN_SCRAPES
    inc, span = points[-1][1] - points[0][1], points[-1][0] - points[0][0]
    assert inc > 0 and span > 0
    step = span / (len(points) - 1)
    return inc / window * 0.98, inc * (span + 2.5 * step) / span / window * 1.02


def test_adapter_qps_matches_the_twins_counter_increase(frozen: Frozen) -> None:
    at = frozen.adapter.timestamp
    for want in frozen.twin.deployments:
        got = frozen.adapter.deployment(want.model, want.namespace)
        for window in (60, 300, 900, 3600):
            low, high = _rate_bounds(
                frozen.scrapes, window=window, at=at,
                count=lambda tel, m=want.model: tel.deployment(m).counters.requests_total)
            assert low <= got.qps(window) <= high, (want.model, window, got.qps(window))
        # Prometheus' rates are per real second: 20 simulated seconds per real second.
        assert got.qps_1m > 0


def test_adapter_success_rate_and_latency_follow_the_counters(frozen: Frozen) -> None:
    at = frozen.adapter.timestamp
    failing = 0
    for want in frozen.twin.deployments:
        got = frozen.adapter.deployment(want.model, want.namespace)
        inc, _, _ = _increase(frozen.scrapes, want.model, since=at - 300,
                              field=lambda c: c.requests_total)
        ok, _, _ = _increase(frozen.scrapes, want.model, since=at - 300,
                             field=lambda c: c.success_total)
        assert got.success_rate == pytest.approx(ok / inc, abs=1e-6)
        failing += got.success_rate is not None and got.success_rate < 0.9
        points = [tel.deployment(want.model).counters.e2e_latency
                  for t, tel in frozen.scrapes if t > at - 300]
        delta = [b - a for a, b in zip(points[0].counts, points[-1].counts, strict=True)]
        p99 = histogram_quantile(0.99, bounds=points[0].bounds, counts=delta)
        assert p99 is not None and got.p99_latency_ms is not None
        assert got.p99_latency_ms == pytest.approx(p99 * 1000, rel=0.02)
        mean = (points[-1].sum - points[0].sum) / (points[-1].count - points[0].count)
        assert got.mean_latency_ms == pytest.approx(mean * 1000, rel=1e-3)
        assert got.tokens_per_s > 0
    assert failing == 3  # the three models on a100-2, under a 30 % error spike
    deployments = frozen.adapter.deployments
    weighted = sum(d.qps_5m * (d.success_rate or 0.0) for d in deployments)
    assert frozen.adapter.totals.success_rate == pytest.approx(
        weighted / sum(d.qps_5m for d in deployments))
    assert min(d.success_rate or 1.0 for d in deployments) < \
        frozen.adapter.totals.success_rate < 1.0


def test_hostname_and_Hostname_series_are_merged(frozen: Frozen) -> None:
    nodes = [g.node for g in frozen.adapter.gpus]
    assert len(nodes) == len(set(nodes)) == 13 and all(nodes)
    legacy = frozen.adapter.gpu(LEGACY_NODE, 0)
    assert legacy.gpu_type == "A100" and legacy.uuid == "GPU-legacy-0-0"
    assert legacy.power_w == LEGACY_POWER_W
    assert legacy.utilization == pytest.approx(0.37)
    assert (legacy.memory_used_mib, legacy.memory_total_mib) == \
        (LEGACY_FB_USED, LEGACY_FB_USED + LEGACY_FB_FREE)
    # The vLLM series with a node label attribute requests to that node's GPU.
    served = frozen.adapter.deployment(LEGACY_MODEL, LEGACY_NAMESPACE)
    assert served.nodes == (LEGACY_NODE,)
    assert (served.replicas, served.running, served.queue_waiting) == (1, 2, 3)
    assert served.qps_1m > 0
    assert legacy.qps_1m == pytest.approx(served.qps_1m)
    assert all(g.qps_1m == 0 for g in _twin_gpus(frozen.adapter))


def test_one_cost_formula_prices_the_adapters_reading_as_it_prices_the_twins(
        stack: Stack, frozen: Frozen, settings: Settings) -> None:
    # Sources report measurements only (SPEC §3.8, one formula): core.cost prices either
    # reading with the cluster's layout, so the Overview's cost no longer depends on the
    # metrics source (the adapter used to charge every busy-looking GPU whole, idle unknown).
    assert not hasattr(frozen.adapter.totals, "cost_per_hour")
    layout = stack.twin.nodes()  # no binds in this stack: the layout of both readings
    twin = fleet_cost(frozen.twin, layout, settings.catalog)
    adapter = fleet_cost(frozen.adapter, layout, settings.catalog)
    # The same GPUs at the same power: the same money, to the nano-dollar.
    assert (adapter.gpus_in_use, adapter.gpu_nusd_per_h, adapter.energy_nusd_per_h,
            adapter.idle_nusd_per_h) == (twin.gpus_in_use, twin.gpu_nusd_per_h,
                                         twin.energy_nusd_per_h, twin.idle_nusd_per_h)
    # h100-3 and a100-7 host nothing, nor does the legacy node in the layout: no cost.
    assert adapter.gpus_in_use == 10 and adapter.idle_nusd_per_h > 0
    # Per inference differs only by the served rate each source measured, idle included.
    totals = frozen.adapter.totals
    assert totals.qps == pytest.approx(sum(d.qps_1m for d in frozen.adapter.deployments))
    assert adapter.cost_per_inference == per_inference(adapter.total_nusd_per_h,
                                                       totals.qps * 3600)
    assert adapter.cost_per_inference is not None and adapter.cost_per_inference > 0


def test_shipped_recording_rules_evaluate_on_the_twins_series(stack: Stack, frozen: Frozen
                                                              ) -> None:
    groups = _get_json(f"{stack.url}/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert "fleet:vllm_requests:rate1m" in rules and "LowSuccessRate" in rules
    assert all(r["health"] == "ok" for r in rules.values()), \
        {n: r.get("lastError") for n, r in rules.items() if r["health"] != "ok"}

    # Recorded QPS: the twin's request-count increase over the scrapes, per second...
    recorded = stack.promql("fleet:vllm_requests:rate1m")
    evaluated_at = stack.promql("timestamp(fleet:vllm_requests:rate1m)")
    assert len(recorded) == len(evaluated_at) == 1
    value, at = recorded[0][1], evaluated_at[0][1]
    low, high = _rate_bounds(frozen.scrapes, window=60, at=at,
                             count=lambda tel: sum(d.counters.requests_total
                                                   for d in tel.deployments))
    assert low <= value <= high
    # ...split over models exactly as the counters grew (one target: one extrapolation
    # factor for all its series, so shares are exact), summing to the fleet's figure.
    per_model = {labels["model_name"]: v
                 for labels, v in stack.promql("model_name:vllm_requests:rate1m")}
    assert set(per_model) == {d.model for d in frozen.twin.deployments}
    assert sum(per_model.values()) == pytest.approx(value, rel=1e-9)
    seen = [tel for t, tel in frozen.scrapes if at - 60 < t <= at + 0.1]
    first, last = seen[0], seen[-1]
    grown = {d.model: d.counters.requests_total - first.deployment(d.model).counters
             .requests_total for d in last.deployments}
    for model, rate in per_model.items():
        assert rate / value == pytest.approx(grown[model] / sum(grown.values()), abs=1e-9)
    # Success ratio per model (the LowSuccessRate input) equals the adapter's.
    ratios = {labels["model_name"]: v for labels, v in
              stack.promql("model_name:vllm_request_success:ratio_rate5m")}
    for d in frozen.adapter.deployments:
        if d.model != LEGACY_MODEL:
            assert ratios[d.model] == pytest.approx(d.success_rate, abs=1e-6)


def test_metrics_unavailable_when_prometheus_is_down(settings: Settings) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there any more
    with PrometheusMetrics(url, settings=settings, timeout_s=1.0) as metrics:
        assert metrics.available() is False
        with pytest.raises(TransientError, match="metrics unavailable") as caught:
            metrics.telemetry()
    message = str(caught.value)
    assert url in message and "unreachable" in message and "refused" in message.lower()
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert caught.value.delay > 0


def test_metrics_unavailable_when_the_url_is_not_prometheus(stack: Stack,
                                                           settings: Settings) -> None:
    base = stack.exporter.url.removesuffix("/metrics")
    with PrometheusMetrics(base, settings=settings, timeout_s=1.0) as metrics:
        assert metrics.available() is False
        with pytest.raises(TransientError, match="did not answer like a Prometheus server"):
            metrics.telemetry()


# ------------------------------------------------------------------------------------------
# A Prometheus that scrapes nothing: no data, never "0 QPS — safe to update"
# ------------------------------------------------------------------------------------------
class StaleCollector(Collector):
    """Serves an empty page until ``stale_at`` is set; then one dcgm-exporter series whose
    sample carries that (old) timestamp: Prometheus keeps returning it for its 5 min
    look-back, though nothing new was scraped."""

    def __init__(self) -> None:
        self.stale_at: float | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        if self.stale_at is None:
            return
        family = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "power",
                                   labels=["gpu", "UUID", "modelName", "Hostname"])
        family.add_metric(["0", "GPU-stale-0", "NVIDIA H100 80GB HBM3", "stale-0"], 300.0,
                          timestamp=self.stale_at)
        yield family


@dataclass
class EmptyStack:
    url: str
    collector: StaleCollector
    log: Path


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmptyStack]:
    """A real Prometheus whose only target is up and serves an empty page."""
    binary = require_binary("prometheus", "Debian package prometheus")
    tmp = tmp_path_factory.mktemp("empty-prometheus")
    collector = StaleCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    port = _free_port()
    log = tmp / "prometheus.log"
    with serve_registry(registry) as target, log.open("wb") as log_file:
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "empty",
                                "static_configs": [{"targets": [target.target]}]}],
        }), encoding="utf-8")
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log_file, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"

            def scraped() -> bool:
                rows = _get_json(f"{url}/api/v1/query?query=up")["data"]["result"]
                return [r["value"][1] for r in rows] == ["1"]

            _wait_until(lambda: _ready(url, process), timeout_s=15,
                        what="prometheus to be ready", log=log)
            _wait_until(scraped, timeout_s=10, what="the empty target scraped", log=log)
            yield EmptyStack(url=url, collector=collector, log=log)
        finally:
            _stop_process(process)


def test_an_empty_scrape_is_no_data_not_zero(empty_prometheus: EmptyStack,
                                             settings: Settings) -> None:
    with PrometheusMetrics(empty_prometheus.url, settings=settings, timeout_s=2.0) as metrics:
        assert metrics.available() is True  # it answers...
        with pytest.raises(NoDataError) as caught:  # ...but holds nothing to read
            metrics.telemetry()
    assert isinstance(caught.value, TransientError)
    assert str(caught.value).startswith("no data: ")
    assert "holds no dcgm-exporter or vLLM series" in caught.value.reason
    assert f"{empty_prometheus.url}/targets" in caught.value.reason


def test_the_overview_shows_no_data_and_the_gate_is_closed(
        empty_prometheus: EmptyStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'console.db'}")
    monkeypatch.setenv("GSC_BACKFILL_HOURS", "0")
    monkeypatch.setenv("GSC_EMBEDDED_CONTROLLER", "0")
    monkeypatch.setenv("PROMETHEUS_URL", empty_prometheus.url)
    main = sys.modules["__main__"]
    streamlit.cache_resource.clear()
    try:
        at = open_page()
        rt = services.runtime()
        assert rt.sampler is not None
        rt.sampler.stop()  # this test takes the sample
        state = rt.monitor.sample_once(persist=False)
        assert state.latest is None and state.no_data is not None
        at.run()
        assert not at.exception
        banner = [e.value for e in at.error if "QPS unknown" in e.value]
        assert banner and "no data: Prometheus at" in banner[0], [e.value for e in at.error]
        shown = [e.value for e in (*at.success, *at.info, *at.warning, *at.error, *at.caption)]
        assert not any("safe to update" in v or "No alert is firing" in v for v in shown)
        assert any("Alerts cannot be evaluated without data" in w.value for w in at.warning)
        assert any("QPS gate: **closed**" in c.value for c in at.caption)
        assert {m.label: m.value for m in at.metric}["QPS (1 m)"] == "unknown"
        bands = services.settings().qps_bands
        gate = qps_gate(services.live_reading_now(services.layout()), safe=bands.safe,
                        caution=bands.caution, high_risk=bands.high_risk)
        assert gate.passed is False and gate.band == "unknown"
    finally:
        streamlit.cache_resource.clear()
        sys.modules["__main__"] = main


def test_a_stale_sample_is_no_data(empty_prometheus: EmptyStack, settings: Settings) -> None:
    """After the empty-scrape tests: the target now serves one sample, a minute old."""
    empty_prometheus.collector.stale_at = time.time() - 60
    with PrometheusMetrics(empty_prometheus.url, settings=settings, timeout_s=2.0,
                           max_sample_age_s=30) as metrics:
        _wait_until(lambda: bool(metrics.query("DCGM_FI_DEV_POWER_USAGE")), timeout_s=10,
                    what="the stale sample to be ingested", log=empty_prometheus.log)
        with pytest.raises(NoDataError, match="the newest dcgm-exporter sample") as caught:
            metrics.telemetry()
    age = float(caught.value.reason.split(" is ")[1].split(" s old")[0])
    assert 55 <= age <= 120, caught.value.reason
    # A source that allows older samples reads it: the check is the age, nothing else.
    with PrometheusMetrics(empty_prometheus.url, settings=settings, timeout_s=2.0,
                           max_sample_age_s=600) as lenient:
        (gpu,) = lenient.telemetry().gpus
    assert (gpu.node, gpu.power_w) == ("stale-0", 300.0)


def test_twin_series_vanish_while_its_metrics_are_down(stack: Stack, frozen: Frozen) -> None:
    """Last in the file: it takes the shared twin's series away for a moment, and waits
    for them to come back."""
    fault = stack.twin.inject(faults.metrics_down())
    try:
        _wait_until(lambda: [g.node for g in stack.metrics.telemetry().gpus] == [LEGACY_NODE],
                    timeout_s=5, what="the twin's series to go stale", log=stack.log)
        tel = stack.metrics.telemetry()
        assert {d.model for d in tel.deployments} == {LEGACY_MODEL}
        up = {labels["job"]: v for labels, v in stack.promql("up")}
        assert up == {"twin": 1.0, "legacy": 1.0}  # the exporter answers, without series
    finally:
        stack.twin.clear_fault(fault)
    _wait_until(lambda: len(stack.metrics.telemetry().gpus) == 13, timeout_s=5,
                what="the twin's series to come back", log=stack.log)


def test_gpu_type_is_read_from_the_product_name(settings: Settings) -> None:
    catalog = settings.catalog
    assert gpu_type_of("NVIDIA H100 80GB HBM3", catalog) == "H100"
    assert gpu_type_of("NVIDIA A100-SXM4-40GB", catalog) == "A100"
    assert gpu_type_of("NVIDIA A100 80GB PCIe", catalog) == "A100"
    assert gpu_type_of("NVIDIA A10", catalog) == "NVIDIA A10"
    assert gpu_type_of("Tesla T4", catalog) == "Tesla T4"
