"""The twin's exporter speaks dcgm-exporter and vLLM: names, labels, units and values.

Renders the exposition text in-process (no sockets) for a twin on a manual
clock, parses it with prometheus-client's own parser and compares every value
with the twin's reading of the same instant.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.adapters.exporter import FINISHED_REASONS, product_name, render_exposition
from core.clock import ManualClock
from core.settings import Settings
from core.sim import faults
from core.sim.twin import Twin
from core.telemetry import E2E_LATENCY_BUCKETS_S, TTFT_BUCKETS_S, FleetTelemetry, Histogram

START = 1_700_000_000.0
DCGM_GAUGES = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED",
               "DCGM_FI_DEV_FB_FREE")
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"

Series = dict[str, dict[frozenset[tuple[str, str]], float]]


def _series(text: str) -> tuple[Series, dict[str, str]]:
    """Sample name → {label set → value}, and family name → type."""
    samples: Series = defaultdict(dict)
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.samples:
            types[family.name] = family.type
        for s in family.samples:
            key = frozenset(s.labels.items())
            assert key not in samples[s.name], f"duplicate series {s.name}{s.labels}"
            samples[s.name][key] = s.value
    return samples, types


def _one(series: Series, name: str, **labels: str) -> float:
    want = set(labels.items())
    hits = [v for k, v in series[name].items() if want <= k]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} series"
    return hits[0]


@pytest.fixture()
def twin(settings: Settings) -> Twin:
    t = Twin(settings, clock=ManualClock(START))
    # Some failures, so that the success/failure split has something to show.
    t.inject(faults.error_spike("a100-2", rate=0.3))
    t.step(15 * 60)
    return t


@pytest.fixture()
def reading(twin: Twin) -> tuple[FleetTelemetry, Series, dict[str, str]]:
    tel = twin.telemetry()
    series, types = _series(render_exposition(twin))
    return tel, series, types


def test_dcgm_series_carry_the_real_names_labels_and_units(reading) -> None:
    tel, series, types = reading
    assert all(types[name] == "gauge" for name in DCGM_GAUGES)
    assert types[ENERGY] == "unknown"  # dcgm-exporter's name has no _total (see the module)
    for name in (*DCGM_GAUGES, ENERGY):
        assert len(series[name]) == len(tel.gpus) == 12
    for g in tel.gpus:
        labels = {"Hostname": g.node, "gpu": str(g.gpu_index), "UUID": g.uuid,
                  "device": f"nvidia{g.gpu_index}",
                  "modelName": product_name(g.gpu_type, g.memory_total_mib)}
        assert set(dict(next(k for k in series["DCGM_FI_DEV_POWER_USAGE"]
                             if ("Hostname", g.node) in k))) == set(labels)
        assert _one(series, "DCGM_FI_DEV_GPU_UTIL", **labels) == pytest.approx(
            g.utilization * 100, abs=1e-9)
        assert _one(series, "DCGM_FI_DEV_POWER_USAGE", **labels) == g.power_w
        assert _one(series, "DCGM_FI_DEV_FB_USED", **labels) == g.memory_used_mib
        assert _one(series, "DCGM_FI_DEV_FB_FREE", **labels) == g.memory_free_mib
        assert _one(series, ENERGY, **labels) == pytest.approx(g.energy_j * 1000, rel=1e-12)
    model_names = {dict(k)["modelName"] for k in series["DCGM_FI_DEV_POWER_USAGE"]}
    assert model_names == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"}
    busy = [g for g in tel.gpus if g.utilization > 0]
    assert busy, "the twin should be busy after 15 minutes"
    assert all(_one(series, "DCGM_FI_DEV_GPU_UTIL", Hostname=g.node) > 1 for g in busy)


def test_request_counter_splits_success_and_failure_by_finished_reason(reading) -> None:
    tel, series, types = reading
    assert types["vllm:request_success"] == "counter"
    failing = 0
    for d in tel.deployments:
        c = d.counters
        assert c is not None
        by_reason = {r: _one(series, "vllm:request_success_total", model_name=d.model,
                             namespace=d.namespace, finished_reason=r)
                     for r in FINISHED_REASONS}
        assert sum(by_reason.values()) == c.requests_total > 0
        assert by_reason["stop"] + by_reason["length"] == c.success_total
        assert by_reason["abort"] + by_reason["error"] == c.failure_total
        failing += c.failure_total > 0
    # The error spike on a100-2 fails about 30 % of its three models' requests.
    on_a100_2 = [d for d in tel.deployments if "a100-2" in d.nodes]
    assert failing == len(on_a100_2) == 3
    for d in on_a100_2:
        assert d.counters is not None
        assert 0.2 < d.counters.failure_total / d.counters.requests_total < 0.4


def test_gauges_and_token_counters_match_each_deployment(reading) -> None:
    tel, series, _ = reading
    assert len(series["vllm:num_requests_running"]) == len(tel.deployments) == 14
    for d in tel.deployments:
        who = {"model_name": d.model, "namespace": d.namespace}
        assert d.counters is not None
        assert _one(series, "vllm:num_requests_waiting", **who) == d.queue_waiting
        assert _one(series, "vllm:num_requests_running", **who) == d.running
        assert _one(series, "vllm:prompt_tokens_total", **who) == d.counters.prompt_tokens_total
        assert _one(series, "vllm:generation_tokens_total", **who) == \
            d.counters.generation_tokens_total > 0


def _check_histogram(series: Series, name: str, who: dict[str, str], h: Histogram,
                     bounds: tuple[float, ...]) -> None:
    assert h.bounds == bounds
    buckets = {float(dict(k)["le"]): v for k, v in series[f"{name}_bucket"].items()
               if set(who.items()) <= k}
    assert sorted(buckets) == [*bounds, math.inf]
    cumulative = [buckets[b] for b in sorted(buckets)]
    assert cumulative == sorted(cumulative), "buckets must be cumulative"
    running = 0
    for bound, count in zip((*bounds, math.inf), h.counts, strict=True):
        running += count
        assert buckets[bound] == running
    assert _one(series, f"{name}_count", **who) == buckets[math.inf] == h.count
    assert _one(series, f"{name}_sum", **who) == pytest.approx(h.sum, rel=1e-12)


def test_histograms_are_cumulative_and_match_the_twins_counts(reading) -> None:
    tel, series, types = reading
    assert types["vllm:e2e_request_latency_seconds"] == "histogram"
    assert types["vllm:time_to_first_token_seconds"] == "histogram"
    for d in tel.deployments:
        who = {"model_name": d.model, "namespace": d.namespace}
        assert d.counters is not None
        assert d.counters.e2e_latency.count > 0
        _check_histogram(series, "vllm:e2e_request_latency_seconds", who,
                         d.counters.e2e_latency, E2E_LATENCY_BUCKETS_S)
        _check_histogram(series, "vllm:time_to_first_token_seconds", who,
                         d.counters.ttft, TTFT_BUCKETS_S)


def test_counters_grow_between_scrapes(twin: Twin) -> None:
    before, _ = _series(render_exposition(twin))
    twin.step(60)
    after, _ = _series(render_exposition(twin))
    for name in ("vllm:request_success_total", "vllm:generation_tokens_total", ENERGY):
        assert set(after[name]) == set(before[name])
        assert all(after[name][k] >= v for k, v in before[name].items())
        assert sum(after[name].values()) > sum(before[name].values())


def test_lowercase_hostname_option(twin: Twin) -> None:
    series, _ = _series(render_exposition(twin, hostname_label="hostname"))
    keys = [dict(k) for k in series["DCGM_FI_DEV_POWER_USAGE"]]
    assert all("hostname" in k and "Hostname" not in k for k in keys)
    assert {k["hostname"] for k in keys} == {g.node for g in twin.telemetry().gpus}


def test_metrics_down_scrape_is_empty_and_recovers(twin: Twin) -> None:
    fault = twin.inject(faults.metrics_down())
    text = render_exposition(twin)  # must not raise
    series, _ = _series(text)
    assert not any(name.startswith(("DCGM_", "vllm:")) for name in series)
    twin.clear_fault(fault)
    series, _ = _series(render_exposition(twin))
    assert len(series["DCGM_FI_DEV_POWER_USAGE"]) == 12


def test_a_failed_gpu_reads_zero_power_and_utilization(twin: Twin) -> None:
    twin.inject(faults.gpu_failure("h100-0"))
    twin.step(30)
    series, _ = _series(render_exposition(twin))
    assert _one(series, "DCGM_FI_DEV_POWER_USAGE", Hostname="h100-0") == 0.0
    assert _one(series, "DCGM_FI_DEV_GPU_UTIL", Hostname="h100-0") == 0.0


def test_a_not_ready_node_exports_nothing(twin: Twin) -> None:
    twin.inject(faults.node_not_ready("a100-7"))
    series, _ = _series(render_exposition(twin))
    assert len(series["DCGM_FI_DEV_POWER_USAGE"]) == 11
    assert not any(("Hostname", "a100-7") in k for k in series["DCGM_FI_DEV_POWER_USAGE"])


def test_product_names() -> None:
    assert product_name("H100", 81920) == "NVIDIA H100 80GB HBM3"
    assert product_name("A100", 40960) == "NVIDIA A100-SXM4-40GB"
    assert product_name("A100", 81920) == "NVIDIA A100-SXM4-80GB"
    assert product_name("B200", 183 * 1024) == "NVIDIA B200 183GB"
