"""The twin's physics: MPS share, co-location, load, power and traffic shape."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.clock import ManualClock
from core.model import WorkloadClass
from core.settings import Settings
from core.sim import PerfModel, Twin, TwinConfig
from core.sim.perf_model import (
    H100_DECODE_SPEEDUP,
    H100_PREFILL_SPEEDUP,
    iteration_time,
    power_w,
    solve_concurrency,
)
from core.sim.traffic import DiurnalTraffic, assign_deployments, constant_traffic
from core.telemetry import FleetTelemetry

CLASSES = tuple(WorkloadClass)
TYPES = ("A100", "H100")


@pytest.fixture(scope="module")
def perf(settings: Settings) -> PerfModel:
    return PerfModel.for_catalog(settings.catalog)


def _twin(settings: Settings, qps: float, *, seed: int = 0, **config: object) -> Twin:
    return Twin(settings, clock=ManualClock(0.0), traffic=constant_traffic(qps, seed=seed),
                config=TwinConfig(seed=seed, **config))  # type: ignore[arg-type]


def _mean_latency_ms(t: FleetTelemetry) -> float:
    counters = [d.counters for d in t.deployments if d.counters]
    return 1000.0 * sum(c.e2e_latency.sum for c in counters) / sum(
        c.e2e_latency.count for c in counters)


def test_iteration_time_follows_the_published_form(perf: PerfModel) -> None:
    p = perf.params_for(WorkloadClass.MEDIUM, "A100")
    for b, r in ((1, 0.25), (8, 0.5), (48, 1.0)):
        expected = (p.k1 * b * b + p.k2 * b + p.k3) / (r + p.k4) + p.k5
        assert p.iteration_s(b, r) == pytest.approx(expected)


@pytest.mark.parametrize("wc", CLASSES)
@pytest.mark.parametrize("gpu_type", TYPES)
def test_throughput_grows_with_mps_share_but_less_than_proportionally(
    perf: PerfModel, wc: WorkloadClass, gpu_type: str
) -> None:
    def thr(share: float) -> float:
        return perf.max_throughput_rps(wc, gpu_type, share=share, prompt_tokens=300,
                                       output_tokens=20)

    quarter, half, full = thr(0.25), thr(0.5), thr(1.0)
    assert quarter < half < full
    assert quarter > 0.5 * half, "25 % of the SMs must give more than half of what 50 % gives"
    assert full < 2.0 * half


@pytest.mark.parametrize("wc", CLASSES)
def test_h100_is_faster_than_a100_by_the_documented_factors(
    perf: PerfModel, wc: WorkloadClass
) -> None:
    a100, h100 = perf.params_for(wc, "A100"), perf.params_for(wc, "H100")
    assert a100.iteration_s(8, 1.0) / h100.iteration_s(8, 1.0) == pytest.approx(
        H100_DECODE_SPEEDUP)
    assert a100.prefill_s(1000, 1.0) / h100.prefill_s(1000, 1.0) == pytest.approx(
        H100_PREFILL_SPEEDUP)


def test_concurrency_satisfies_littles_law() -> None:
    k = {"k1": 2e-6, "k2": 1.9e-4, "k3": 9.6e-3, "k4": 0.2, "k5": 2e-3}
    rate = np.array([10.0, 200.0, 1000.0])
    conc = solve_concurrency(rate, 0.5, slowdown=1.08, max_batch=48.0, **k)
    residual = conc - rate * 1.08 * iteration_time(conc, 0.5, **k)
    assert np.allclose(residual, 0.0, atol=1e-9)
    assert np.all(np.diff(conc) > 0)
    assert solve_concurrency(1e6, 0.5, slowdown=1.0, max_batch=48.0, **k) == 48.0


def test_more_load_means_higher_latency_until_saturation(perf: PerfModel) -> None:
    def latency(rps: float) -> float:
        return perf.steady_state(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=200,
                                 output_tokens=20, arrival_rps=rps).latency_s

    capacity = perf.max_throughput_rps(WorkloadClass.MEDIUM, "A100", share=0.5,
                                       prompt_tokens=200, output_tokens=20)
    rates = [0.0, 0.25 * capacity, 0.5 * capacity, 0.9 * capacity]
    latencies = [latency(r) for r in rates]
    assert latencies == sorted(latencies) and latencies[0] < latencies[-1]
    assert latency(1.01 * capacity) == float("inf")


def test_a_co_located_client_slows_its_neighbour_in_the_model(perf: PerfModel) -> None:
    alone = perf.steady_state(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=200,
                              output_tokens=20, arrival_rps=5.0)
    shared = perf.steady_state(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=200,
                               output_tokens=20, arrival_rps=5.0, co_runners=1)
    assert perf.slowdown(1) == pytest.approx(1.08)
    assert 0.05 <= perf.slowdown(1) - 1 <= 0.13  # within the published +5 % … +13 %
    assert shared.latency_s > alone.latency_s
    assert perf.max_throughput_rps(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=200,
                                   output_tokens=20, co_runners=1) < \
        perf.max_throughput_rps(WorkloadClass.MEDIUM, "A100", share=0.5, prompt_tokens=200,
                                output_tokens=20)


def test_power_stays_between_idle_and_tdp_and_grows_with_utilization() -> None:
    u = np.linspace(-0.5, 1.5, 41)
    watts = power_w(u, idle_w=140.0, tdp_w=700.0)
    assert watts.min() == pytest.approx(140.0) and watts.max() == pytest.approx(700.0)
    assert np.all(np.diff(watts) >= 0)
    assert power_w(0.5, idle_w=50.0, tdp_w=400.0) == pytest.approx(50 + 350 * 0.5**1.5)


def test_more_load_means_higher_latency_and_power_in_the_twin(settings: Settings) -> None:
    readings = []
    for qps in (30.0, 250.0):
        twin = _twin(settings, qps)
        twin.step(300)
        readings.append(twin.telemetry())
    light, heavy = readings
    assert heavy.totals.power_w > light.totals.power_w + 300
    assert _mean_latency_ms(heavy) > _mean_latency_ms(light)
    busiest = max(heavy.deployments, key=lambda d: d.qps_5m).model
    heavy_p99 = heavy.deployment(busiest).p99_latency_ms
    light_p99 = light.deployment(busiest).p99_latency_ms
    assert heavy_p99 is not None and light_p99 is not None and heavy_p99 > light_p99
    assert sum(g.utilization for g in heavy.gpus) > sum(g.utilization for g in light.gpus)


def test_overload_builds_a_queue_and_latency_keeps_growing(settings: Settings) -> None:
    twin = _twin(settings, 900.0)
    twin.step(60)
    first = twin.telemetry()
    twin.step(60)
    second = twin.telemetry()
    assert second.totals.queue_waiting > first.totals.queue_waiting > 0
    assert _mean_latency_ms(second) > _mean_latency_ms(first)
    assert max(g.utilization for g in second.gpus) > 0.95


def test_a_co_located_client_slows_its_neighbour_in_the_twin(settings: Settings) -> None:
    """a100-1 holds mistral-7b and phi-2. The same requests reach mistral-7b in both runs;
    only whether phi-2 runs beside it differs."""
    def mistral_latency(*, neighbour: bool) -> float:
        twin = Twin(settings, clock=ManualClock(0.0), traffic=constant_traffic(24.0, seed=3))
        weights = {"mistral-7b": 1.0, "phi-2": 5.0}
        twin.set_traffic_weights({d.model: weights.get(d.model, 0.0)
                                  for d in twin.telemetry().deployments})
        if not neighbour:
            twin.delete_pod("default", "phi-2-0")
        twin.step(600)
        d = twin.telemetry().deployment("mistral-7b")
        assert d.counters is not None
        return d.counters.e2e_latency.sum / d.counters.e2e_latency.count

    alone, shared = mistral_latency(neighbour=False), mistral_latency(neighbour=True)
    assert 1.04 < shared / alone < 1.13  # one co-runner: +8 % on its iterations


def test_power_of_every_gpu_stays_between_idle_and_tdp_in_the_twin(settings: Settings) -> None:
    for qps in (0.0, 120.0, 2000.0):
        twin = _twin(settings, qps)
        twin.step(120)
        for g in twin.telemetry().gpus:
            spec = settings.catalog[g.gpu_type]
            assert spec.idle_w - 0.1 <= g.power_w <= spec.tdp_w + 0.1
            assert 0.0 <= g.utilization <= 1.0


def test_diurnal_traffic_is_low_at_night_and_peaks_in_business_hours() -> None:
    traffic = DiurnalTraffic(seed=1)
    hour = 3600.0
    assert 20 <= traffic.rate(2.5 * hour) <= 30
    assert traffic.rate(11 * hour) == pytest.approx(300)
    assert 40 <= traffic.rate(15 * hour) <= 60
    night = len(traffic.arrivals(2 * hour, 4 * hour))
    day = len(traffic.arrivals(10 * hour, 12 * hour))
    assert day > 5 * night


def test_the_twins_day_comes_from_sim_hourly_qps_when_set(settings: Settings) -> None:
    """``[sim] hourly_qps`` (one value: a flat day) and ``bursts_per_hour`` drive the
    twin's own arrivals; left empty, the built-in day does (300 QPS at 11:00 UTC)."""
    hour = 3600.0
    clock = ManualClock(11 * hour)
    flat = replace(settings, sim=replace(settings.sim, hourly_qps=(40,), bursts_per_hour=0))
    assert flat.sim.hourly_qps == (40.0,) * 24
    twin = Twin(flat, clock=clock, config=TwinConfig(warmup_s=0))
    arrived = len(twin._engine.traffic.arrivals(11 * hour, 11 * hour + 600))
    assert 40 * 600 * 0.9 < arrived < 40 * 600 * 1.1  # Poisson: sd ~ 155 of 24,000
    builtin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=0))
    assert builtin._engine.traffic.rate(11 * hour) == pytest.approx(300)


def test_diurnal_arrivals_are_reproducible_and_do_not_depend_on_chunking() -> None:
    whole = DiurnalTraffic(seed=5).arrivals(3000.0, 8000.0)
    parts = DiurnalTraffic(seed=5)
    pieces = [parts.arrivals(a, b) for a, b in ((3000.0, 3600.0), (3600.0, 3601.5),
                                                (3601.5, 8000.0))]
    joined = np.concatenate([p.times for p in pieces])
    assert np.array_equal(whole.times, joined)
    assert np.all(np.diff(whole.times) >= 0)
    assert whole.times.min() >= 3000.0 and whole.times.max() < 8000.0
    assert not np.array_equal(DiurnalTraffic(seed=6).arrivals(3000.0, 8000.0).times[:50],
                              whole.times[:50])


def test_traffic_is_split_across_deployments_by_weight() -> None:
    rng = np.random.default_rng(0)
    weights = np.array([1.0, 3.0, 0.0, 6.0])
    split = np.bincount(assign_deployments(100_000, weights=weights, rng=rng),
                        minlength=4) / 100_000
    assert split == pytest.approx([0.1, 0.3, 0.0, 0.6], abs=0.01)


def test_the_per_gpu_ring_keeps_the_last_minute_even_after_a_longer_chunk() -> None:
    from core.sim.books import GPU_WINDOW_S, Books

    books = Books(gpu_count=2, tick_s=1.0, ring_len=3601, hist_len=40, ticks_per_hslot=10,
                  explicit_weights={})
    books.deployment("ns", "m")
    assert books.r_gpu.shape[0] == GPU_WINDOW_S + 1  # not an hour of rows per GPU
    k = 100  # one chunk longer than the ring: tick t sends t requests to GPU 1
    k_i = np.repeat(np.arange(k), np.arange(k))
    n = k_i.size
    books.account(ticks=0, k_ticks=k, k_i=k_i, dep_i=np.zeros(n, dtype=np.int64),
                  ok=np.ones(n, dtype=bool), served=np.ones(n, dtype=bool),
                  gpu_i=np.ones(n, dtype=np.int64), prompt=np.ones(n), output=np.ones(n),
                  latency=np.full(n, 0.1), ttft=np.full(n, 0.05))
    total, covered = books.window_sum(books.r_gpu, 60, ticks=k)
    assert covered == 60
    assert total.tolist() == [0, sum(range(40, 100))]  # ticks 40..99, the last minute
    requests, _ = books.window_sum(books.r_req, 3600, ticks=k)
    assert requests.tolist() == [n]  # the per-deployment rings still hold the hour


def test_a_chunk_of_a_large_fleet_is_capped_in_ticks_times_gpus(
        settings: Settings, tmp_path: Path) -> None:
    from core.adapters.settings_source import load_settings

    small = Twin(settings, clock=ManualClock(1_700_000_000.0), config=TwinConfig(warmup_s=0))
    assert small._engine.max_chunk == 300  # the demo fleet keeps max_chunk_s
    toml = tmp_path / "large.toml"
    toml.write_text("[fleet]\nH100 = 200\nA100 = 425\ngpus_per_node = 8\n", encoding="utf-8")
    clock = ManualClock(1_700_000_000.0)
    large = Twin(load_settings(env={"GSC_SETTINGS_FILE": str(toml)}), clock=clock,
                 config=TwinConfig(warmup_s=0))
    assert large.gpu_count == 5000
    assert large._engine.max_chunk == 30  # 150,000 GPU-ticks at most per chunk
    clock.advance(95.0)
    large.sync()
    assert large._engine.ticks == 95  # 30 + 30 + 30 + 5
