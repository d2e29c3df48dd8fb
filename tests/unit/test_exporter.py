"""The twin's exporter speaks dcgm-exporter, vLLM V1 and ingress-nginx as they really do.

Renders each page in-process (no sockets) for a twin on a manual clock, parses
it with prometheus-client's own parser and compares every value with the
twin's reading of the same instant: dcgm-exporter's pod mapping and
FB_RESERVED, vLLM's per-engine series without namespace or pod (target labels
bring those) and without aborted requests, the gateway's counts by status.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.adapters.exporter import (
    COLON_RELABEL,
    DCGM_PATH,
    FINISHED_REASONS,
    GATEWAY_PATH,
    GATEWAY_REQUESTS,
    ITL_NAME,
    OLD_ITL_NAME,
    Shape,
    part,
    product_name,
    render_exposition,
    scrape_configs,
    servers,
)
from core.clock import ManualClock
from core.settings import Settings
from core.sim import faults
from core.sim.twin import Twin
from core.telemetry import (
    E2E_LATENCY_BUCKETS_S,
    ITL_BUCKETS_S,
    TTFT_BUCKETS_S,
    FleetTelemetry,
    Histogram,
)

START = 1_700_000_000.0
DCGM_GAUGES = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED",
               "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED")
OPENMETRICS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                      "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
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
    """The dcgm page."""
    tel = twin.telemetry()
    series, types = _series(render_exposition(twin))
    return tel, series, types


def _servers(twin: Twin, shape: Shape | None = None) -> dict[tuple[str, str], Series]:
    """(namespace, pod) → that vLLM server's page."""
    shape = shape or Shape()
    return {(s.namespace, s.pod): _series(render_exposition(twin, path=s.path, shape=shape))[0]
            for s in servers(twin.telemetry())}


def _total(pages: Iterable[Series], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for page in pages for k, v in page[name].items() if want <= k)


def test_dcgm_series_carry_the_real_names_labels_units_and_pod_mapping(reading) -> None:
    tel, series, types = reading
    assert all(types[name] == "gauge" for name in DCGM_GAUGES)
    assert types[ENERGY] == "unknown"  # dcgm-exporter's name has no _total (see the module)
    users = sum(max(1, len(g.pods)) for g in tel.gpus)  # one series per (GPU, pod using it)
    assert users > len(tel.gpus) == 12  # MPS: some GPUs serve several pods
    for name in (*DCGM_GAUGES, ENERGY):
        assert len(series[name]) == users
    for g in tel.gpus:
        base = {"Hostname": g.node, "gpu": str(g.gpu_index), "UUID": g.uuid,
                "device": f"nvidia{g.gpu_index}",
                "modelName": product_name(g.gpu_type, g.memory_total_mib)}
        for p in g.pods or ("/",):
            namespace, pod = p.split("/")
            labels = {**base, "pod": pod, "namespace": namespace,
                      "container": "vllm" if pod else ""}
            assert set(dict(next(k for k in series["DCGM_FI_DEV_POWER_USAGE"]
                                 if set(labels.items()) <= k))) == set(labels)
            assert _one(series, "DCGM_FI_DEV_GPU_UTIL", **labels) == pytest.approx(
                g.utilization * 100, abs=1e-9)
            assert _one(series, "DCGM_FI_DEV_POWER_USAGE", **labels) == g.power_w
            used = _one(series, "DCGM_FI_DEV_FB_USED", **labels)
            free = _one(series, "DCGM_FI_DEV_FB_FREE", **labels)
            reserved = _one(series, "DCGM_FI_DEV_FB_RESERVED", **labels)
            assert (used, reserved) == (g.memory_used_mib, g.memory_reserved_mib)
            assert used + free + reserved == g.memory_total_mib
            assert _one(series, ENERGY, **labels) == pytest.approx(g.energy_j * 1000,
                                                                   rel=1e-12)
    idle = [g for g in tel.gpus if not g.pods]
    assert {g.node for g in idle} >= {"h100-3", "a100-7"}
    model_names = {dict(k)["modelName"] for k in series["DCGM_FI_DEV_POWER_USAGE"]}
    assert model_names == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"}
    busy = [g for g in tel.gpus if g.utilization > 0]
    assert busy, "the twin should be busy after 15 minutes"
    assert all(_one(series, "DCGM_FI_DEV_GPU_UTIL", Hostname=g.node,
                    pod=(g.pods[0].split("/")[1] if g.pods else "")) > 1 for g in busy)


def test_dcgm_without_pod_mapping_and_with_the_old_uuid_label(twin: Twin) -> None:
    series, _ = _series(render_exposition(twin, shape=Shape(pod_mapping=False,
                                                            uuid_label="uuid")))
    keys = [dict(k) for k in series["DCGM_FI_DEV_POWER_USAGE"]]
    assert len(keys) == 12
    assert all("uuid" in k and "UUID" not in k and "pod" not in k for k in keys)


def test_vllm_servers_carry_model_and_engine_only_and_count_no_aborts(twin: Twin) -> None:
    tel = twin.telemetry()
    pages = _servers(twin)
    assert len(pages) == sum(len(d.pods) for d in tel.deployments) == 14
    failing = 0
    for (namespace, pod), page in pages.items():
        d = next(d for d in tel.deployments if f"{namespace}/{pod}" in d.pods)
        for name, children in page.items():
            for k in children:
                assert {n for n, _ in k} <= {"model_name", "engine", "finished_reason", "le"}, \
                    (name, k)  # namespace, pod and node are target labels
                assert dict(k)["model_name"] == d.model and dict(k)["engine"] == "0"
        c = d.counters
        assert c is not None
        by_reason = {r: _one(page, "vllm:request_success_total", finished_reason=r)
                     for r in FINISHED_REASONS}
        # vLLM pre-creates abort but never increments it: only successes are counted.
        assert by_reason == {"stop": c.success_total, "length": 0, "abort": 0, "error": 0}
        assert c.success_total > 0
        # Aborted requests stay out of the latency histograms too.
        assert _one(page, "vllm:e2e_request_latency_seconds_count") == c.e2e_latency.count \
            == c.success_total
        failing += c.failure_total > 0
    assert failing == 3  # the error spike on a100-2: failures vLLM does not show


def test_gateway_counts_every_request_by_status(twin: Twin) -> None:
    tel = twin.telemetry()
    series, _ = _series(render_exposition(twin, path=GATEWAY_PATH))
    assert len(series[GATEWAY_REQUESTS]) == 2 * len(tel.deployments)
    for d in tel.deployments:
        c = d.counters
        assert c is not None
        who = {"namespace": d.namespace, "ingress": d.model, "service": d.model}
        assert _one(series, GATEWAY_REQUESTS, status="200", **who) == c.success_total
        assert _one(series, GATEWAY_REQUESTS, status="504", **who) == c.failure_total
    on_a100_2 = [d for d in tel.deployments if "a100-2" in d.nodes]
    assert len(on_a100_2) == 3
    for d in on_a100_2:
        assert d.counters is not None
        assert 0.2 < d.counters.failure_total / d.counters.requests_total < 0.4
    assert render_exposition(twin, path=GATEWAY_PATH, shape=Shape(gateway=False)) == ""


def test_gauges_and_token_counters_match_each_deployment(twin: Twin) -> None:
    tel = twin.telemetry()
    pages = _servers(twin)
    for d in tel.deployments:
        mine = [pages[tuple(p.split("/"))] for p in d.pods]  # type: ignore[index]
        assert d.counters is not None and mine
        assert _total(mine, "vllm:num_requests_waiting") == d.queue_waiting
        assert _total(mine, "vllm:num_requests_running") == d.running
        assert _total(mine, "vllm:prompt_tokens_total") == d.counters.prompt_tokens_total
        assert _total(mine, "vllm:generation_tokens_total") == \
            d.counters.generation_tokens_total > 0


def test_two_engines_split_each_server_and_sum_to_the_whole(twin: Twin) -> None:
    tel = twin.telemetry()
    pages = _servers(twin, Shape(engines=2))
    for (namespace, pod), page in pages.items():
        d = next(d for d in tel.deployments if f"{namespace}/{pod}" in d.pods)
        assert d.counters is not None
        engines = {dict(k)["engine"] for k in page["vllm:num_requests_running"]}
        assert engines == {"0", "1"}
        stop = [_one(page, "vllm:request_success_total", engine=e, finished_reason="stop")
                for e in ("0", "1")]
        assert sum(stop) == d.counters.success_total and abs(stop[0] - stop[1]) <= 1
        assert _total([page], "vllm:e2e_request_latency_seconds_count") == \
            d.counters.e2e_latency.count
        assert _total([page], "vllm:e2e_request_latency_seconds_sum") == pytest.approx(
            d.counters.e2e_latency.sum, rel=1e-12)
        assert _total([page], "vllm:num_requests_running") == d.running


def test_split_parts_are_monotonic_and_sum_to_the_whole() -> None:
    for parts in (1, 2, 3, 4):
        previous = [0] * parts
        for count in range(50):
            split = [part(count, parts=parts, index=i) for i in range(parts)]
            assert sum(split) == count
            assert all(b >= a for a, b in zip(previous, split, strict=True))
            previous = split


def _check_histogram(series: Series, name: str, h: Histogram,
                     bounds: tuple[float, ...]) -> None:
    assert h.bounds == bounds
    buckets = {float(dict(k)["le"]): v for k, v in series[f"{name}_bucket"].items()}
    assert sorted(buckets) == [*bounds, math.inf]
    cumulative = [buckets[b] for b in sorted(buckets)]
    assert cumulative == sorted(cumulative), "buckets must be cumulative"
    running = 0
    for bound, count in zip((*bounds, math.inf), h.counts, strict=True):
        running += count
        assert buckets[bound] == running
    assert _one(series, f"{name}_count") == buckets[math.inf] == h.count
    assert _one(series, f"{name}_sum") == pytest.approx(h.sum, rel=1e-12)


def test_histograms_are_cumulative_and_match_the_twins_counts(twin: Twin) -> None:
    tel = twin.telemetry()
    for s in servers(tel):
        page, types = _series(render_exposition(twin, path=s.path))
        assert types["vllm:e2e_request_latency_seconds"] == "histogram"
        assert types["vllm:time_to_first_token_seconds"] == "histogram"
        d = tel.deployment(s.model, s.namespace)
        assert d.counters is not None and len(d.pods) == 1
        assert d.counters.e2e_latency.count > 0
        _check_histogram(page, "vllm:e2e_request_latency_seconds", d.counters.e2e_latency,
                         E2E_LATENCY_BUCKETS_S)
        _check_histogram(page, "vllm:time_to_first_token_seconds", d.counters.ttft,
                         TTFT_BUCKETS_S)


@pytest.mark.parametrize("name", [ITL_NAME, OLD_ITL_NAME])
def test_inter_token_latency_is_served_under_either_of_vllms_names(twin: Twin,
                                                                   name: str) -> None:
    tel = twin.telemetry()
    other = OLD_ITL_NAME if name == ITL_NAME else ITL_NAME
    for s in servers(tel):
        page, types = _series(render_exposition(twin, path=s.path, shape=Shape(itl_name=name)))
        assert types[name] == "histogram" and f"{other}_bucket" not in page
        d = tel.deployment(s.model, s.namespace)
        assert d.counters is not None and d.counters.itl is not None
        # One observation per output token after the first, as vLLM counts them.
        assert d.counters.itl.count > 0
        _check_histogram(page, name, d.counters.itl, ITL_BUCKETS_S)


def test_content_negotiation_escapes_colons_for_a_prometheus_2_scrape(twin: Twin) -> None:
    path = servers(twin.telemetry())[0].path
    plain = render_exposition(twin, path=path)
    openmetrics = render_exposition(twin, path=path, accept=OPENMETRICS_ACCEPT)
    assert "\nvllm:request_success_total{" in plain
    assert "\nvllm_request_success_total{" in openmetrics
    assert "\nvllm:request_success_total{" not in openmetrics
    assert openmetrics.rstrip().endswith("# EOF")


def test_counters_grow_between_scrapes(twin: Twin) -> None:
    path = servers(twin.telemetry())[0].path
    before = {**_series(render_exposition(twin))[0], **_series(render_exposition(
        twin, path=path))[0]}
    twin.step(60)
    after = {**_series(render_exposition(twin))[0], **_series(render_exposition(
        twin, path=path))[0]}
    for name in ("vllm:request_success_total", "vllm:generation_tokens_total", ENERGY):
        assert set(after[name]) == set(before[name])
        assert all(after[name][k] >= v for k, v in before[name].items())
        assert sum(after[name].values()) > sum(before[name].values())


def test_scrape_configs_attach_target_labels_as_discovery_would(twin: Twin) -> None:
    tel = twin.telemetry()
    jobs = {j["job_name"]: j for j in scrape_configs("127.0.0.1:9", tel)}
    assert set(jobs) == {"dcgm-exporter", "vllm", "ingress-nginx"}
    vllm = jobs["vllm"]
    assert vllm["metric_relabel_configs"] == [COLON_RELABEL] and not vllm["honor_labels"]
    groups = vllm["static_configs"]
    assert len(groups) == 14
    for s, g in zip(servers(tel), groups, strict=True):
        assert g["labels"] == {"__metrics_path__": s.path, "namespace": s.namespace,
                               "pod": s.pod, "node": s.node}
        assert s.node in tel.deployment(s.model, s.namespace).nodes
    dcgm = jobs["dcgm-exporter"]["static_configs"][0]["labels"]
    assert dcgm["__metrics_path__"] == DCGM_PATH and dcgm["pod"] and dcgm["namespace"]
    bare = {j["job_name"]: j for j in scrape_configs(
        "127.0.0.1:9", tel, colon_relabel=False, honor_labels=True,
        shape=Shape(gateway=False))}
    assert set(bare) == {"dcgm-exporter", "vllm"}
    assert "metric_relabel_configs" not in bare["vllm"] and bare["vllm"]["honor_labels"]


def test_lowercase_hostname_option(twin: Twin) -> None:
    series, _ = _series(render_exposition(twin, shape=Shape(hostname_label="hostname")))
    keys = [dict(k) for k in series["DCGM_FI_DEV_POWER_USAGE"]]
    assert all("hostname" in k and "Hostname" not in k for k in keys)
    assert {k["hostname"] for k in keys} == {g.node for g in twin.telemetry().gpus}


def test_metrics_down_scrape_is_empty_and_recovers(twin: Twin) -> None:
    path = servers(twin.telemetry())[0].path
    fault = twin.inject(faults.metrics_down())
    for page in (DCGM_PATH, GATEWAY_PATH, path):
        series, _ = _series(render_exposition(twin, path=page))  # must not raise
        assert not any(name.startswith(("DCGM_", "vllm:", "nginx_")) for name in series)
    twin.clear_fault(fault)
    series, _ = _series(render_exposition(twin))
    assert len({dict(k)["Hostname"] for k in series["DCGM_FI_DEV_POWER_USAGE"]}) == 12


def test_a_failed_gpu_reads_zero_power_and_utilization(twin: Twin) -> None:
    twin.inject(faults.gpu_failure("h100-0"))
    twin.step(30)
    series, _ = _series(render_exposition(twin))
    for name in ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL"):
        values = [v for k, v in series[name].items() if ("Hostname", "h100-0") in k]
        assert values and all(v == 0.0 for v in values)


def test_a_not_ready_node_exports_nothing(twin: Twin) -> None:
    twin.inject(faults.node_not_ready("a100-7"))
    series, _ = _series(render_exposition(twin))
    assert len({dict(k)["Hostname"] for k in series["DCGM_FI_DEV_POWER_USAGE"]}) == 11
    assert not any(("Hostname", "a100-7") in k for k in series["DCGM_FI_DEV_POWER_USAGE"])


def test_an_unknown_path_has_no_series(twin: Twin) -> None:
    assert render_exposition(twin, path="/metrics") == ""
    assert render_exposition(twin, path="/vllm/default/no-such-pod") == ""


def test_product_names() -> None:
    assert product_name("H100", 81920) == "NVIDIA H100 80GB HBM3"
    assert product_name("A100", 40960) == "NVIDIA A100-SXM4-40GB"
    assert product_name("A100", 81920) == "NVIDIA A100-SXM4-80GB"
    assert product_name("B200", 183 * 1024) == "NVIDIA B200 183GB"
