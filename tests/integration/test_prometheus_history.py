"""History charts from a real Prometheus: range queries with a step sized to the range
and a cap on points, over the series the shipped recording rules name.

A tiny exporter on loopback serves two GPUs' power (dcgm-exporter's name) and one
vLLM request counter; the Debian ``prometheus`` binary scrapes it every second
(temporary storage, the shipped ``rules.yml`` at a 1 s interval, as
``test_prometheus`` runs it). The fleet's power steps from 150 W to 300 W at a
known moment; every point the adapter reads is checked against what was served at
its instant (or over its step, for averaged points), away from the step itself.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import streamlit as st
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app import services
from core.adapters.exporter import serve_registry
from core.adapters.prometheus_history import HISTORY_QUERIES, range_series, range_step
from core.adapters.prometheus_metrics import PrometheusMetrics
from core.errors import ValidationError
from core.settings import Settings
from tests.conftest import require_binary
from tests.integration.test_prometheus import (
    _config,
    _free_port,
    _ready,
    _stop_process,
    _wait_until,
)

pytestmark = pytest.mark.integration

BEFORE_W, AFTER_W = (100.0, 50.0), (200.0, 100.0)  # two GPUs: 150 W, then 300 W
MARGIN_S = 3.0  # points this close to the step may see either side (scrape and lookback)


class StepCollector(Collector):
    """Two GPUs' power, switched once; a request counter that grows 5 per scrape."""

    def __init__(self) -> None:
        self.power = BEFORE_W
        self.requests = 0.0
        self._lock = threading.Lock()

    def switch(self) -> None:
        with self._lock:
            self.power = AFTER_W

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self.requests += 5
            power, requests = self.power, self.requests
        gauge = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (W).",
                                  labels=["gpu", "Hostname", "modelName"])
        for i, watts in enumerate(power):
            gauge.add_metric([str(i), "node-0", "NVIDIA H100 80GB HBM3"], watts)
        yield gauge
        counter = CounterMetricFamily("vllm:request_success", "Finished requests.",
                                      labels=["model_name", "finished_reason"])
        counter.add_metric(["m", "stop"], requests)
        yield counter


@dataclass
class Stepped:
    url: str
    metrics: PrometheusMetrics
    started: float
    switched: float
    ended: float


@pytest.fixture(scope="module")
def stepped(settings: Settings, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Stepped]:
    binary = require_binary("prometheus", "Debian package prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-history")
    collector = StepCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    port = _free_port()
    log = tmp / "prometheus.log"
    with ExitStack() as stack:
        exporter = stack.enter_context(serve_registry(registry))
        config = _config(tmp, [{"job_name": "history",
                                "static_configs": [{"targets": [exporter.target]}]}])
        log_file = stack.enter_context(log.open("wb"))
        url = f"http://127.0.0.1:{port}"
        metrics = stack.enter_context(PrometheusMetrics(url, settings=settings, timeout_s=5))
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_until(lambda: _ready(url, process), timeout_s=15,
                        what="prometheus to be ready", log=log)
            _wait_until(lambda: bool(metrics.query("sum(DCGM_FI_DEV_POWER_USAGE)")),
                        timeout_s=15, what="the first scrape", log=log)
            started = time.time()
            # Twenty scrapes before the step and ten after (the rules record meanwhile):
            # the console's 1 h chart steps 7.2 s (500 points), and at least one of its
            # points must fall before the step by more than MARGIN_S.
            _wait_until(lambda: time.time() > started + 20, timeout_s=25, what="20 s")
            collector.switch()
            switched = time.time()
            _wait_until(lambda: metrics.query("sum(DCGM_FI_DEV_POWER_USAGE)")[0][1] == 300.0,
                        timeout_s=15, what="the step to be scraped", log=log)
            _wait_until(lambda: time.time() > switched + 10, timeout_s=15, what="10 s")
            _wait_until(lambda: bool(metrics.query("fleet:vllm_requests:rate1m")),
                        timeout_s=15, what="the recorded QPS series", log=log)
            yield Stepped(url=url, metrics=metrics, started=started, switched=switched,
                          ended=time.time())
        finally:
            _stop_process(process)


def served_power(ts: float, switched: float) -> float | None:
    """What the exporter served at ``ts``; None close to the step."""
    if ts < switched - MARGIN_S:
        return sum(BEFORE_W)
    if ts > switched + MARGIN_S:
        return sum(AFTER_W)
    return None


def test_the_step_is_sized_to_the_range_and_widens_a_callers_step() -> None:
    assert range_step(start=0, end=30 * 86_400, max_points=500) == 5195.0
    assert range_step(start=0, end=3600, max_points=500) == 8.0
    assert range_step(start=0, end=10, max_points=500) == 1.0  # never under a second
    assert range_step(start=0, end=3600, max_points=500, step=60) == 60.0
    assert range_step(start=0, end=3600, max_points=5, step=60) == 900.0
    with pytest.raises(ValidationError, match="max_points"):
        range_step(start=0, end=1, max_points=1)


def test_a_metric_prometheus_does_not_hold_is_refused_by_name(stepped: Stepped) -> None:
    with pytest.raises(ValidationError, match="cost_per_1k"):
        range_series(stepped.metrics, "cost_per_1k", start=stepped.started,
                     end=stepped.ended)


def test_range_query_points_are_capped_and_equal_what_was_served(stepped: Stepped) -> None:
    for cap in (5, 12, 500):
        points = stepped.metrics.range_series("power_w", start=stepped.started,
                                              end=stepped.ended, max_points=cap)
        assert 2 <= len(points) <= cap, cap
        times = [t for t, _ in points]
        assert times == sorted(times) and stepped.started <= times[0]
        checked = 0
        for ts, value in points:
            want = served_power(ts, stepped.switched)
            if want is not None:
                assert value == want, (cap, ts - stepped.switched, value)
                checked += 1
        assert checked >= 2, cap
    # A caller's step finer than the cap allows is widened to fit.
    fine = stepped.metrics.range_series("power_w", start=stepped.started, end=stepped.ended,
                                        step=1, max_points=4)
    assert 2 <= len(fine) <= 4


def test_steps_of_a_few_scrapes_are_means_over_the_step(stepped: Stepped) -> None:
    """With averaging from 2 s on, a 3 s step is the mean of its scrapes: 150 or 300
    away from the switch, between them across it."""
    points = range_series(stepped.metrics, "power_w", start=stepped.started,
                          end=stepped.ended, step=3, max_points=500, min_window_s=2)
    assert len(points) >= 4
    for ts, value in points:
        if ts < stepped.switched - MARGIN_S:
            assert value == sum(BEFORE_W)
        elif ts > stepped.switched + 3 + MARGIN_S:  # the whole step after the switch
            assert value == sum(AFTER_W)
        else:
            assert sum(BEFORE_W) <= value <= sum(AFTER_W)


def test_recorded_fleet_qps_comes_from_the_rule_series(stepped: Stepped) -> None:
    assert HISTORY_QUERIES["qps_1m"] == "fleet:vllm_requests:rate1m"
    points = stepped.metrics.range_series("qps_1m", start=stepped.started, end=stepped.ended,
                                          max_points=50)
    assert 2 <= len(points) <= 50
    assert all(v > 0 for _, v in points)  # a counter that grows 5 a scrape: never idle


def test_the_console_reads_chart_history_from_prometheus(
        stepped: Stepped, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PROMETHEUS_URL set: the Overview's power chart is Prometheus' (this fresh store
    holds no power samples of that time), and no twin history is simulated."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'console.db'}")
    monkeypatch.setenv("PROMETHEUS_URL", stepped.url)
    monkeypatch.setenv("GSC_BACKFILL_HOURS", "0")
    monkeypatch.setenv("GSC_EMBEDDED_CONTROLLER", "0")
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        rt = services.runtime()
        assert rt.metrics_source.startswith("Prometheus")
        assert rt.backfill is None  # the twin's history is never simulated next to one
        frame = services.fleet_series("power_w", hours=1)
        assert 2 <= len(frame) <= rt.settings.retention.chart_max_points
        old = frame[frame["ts"] < stepped.switched - MARGIN_S]
        assert len(old) >= 1 and (old["value"] == sum(BEFORE_W)).all()
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()
