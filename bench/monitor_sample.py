"""Monitor sample speed: one stored sample of the 5,000-GPU twin, phase by phase.

Run: ``python -m bench.monitor_sample [--samples N] [--h100 N] [--a100 N]``.

Builds the twin of ``[fleet] H100 = 200, A100 = 425, gpus_per_node = 8`` (5,000
GPUs) on a ``ManualClock`` and a fresh SQLite store (migrated to head) in a
temporary directory, then takes ``--samples`` (10) samples 30 simulated seconds
apart with ``Monitor.sample_once(persist=True)`` into ``SqlMetricSink``, the
monitor booking cost (``cluster=twin``, ``catalog=settings.catalog``), as the
embedded controller does. One sample before the timed ones opens the first cost
interval (it books none).

Each phase is timed where the sample calls it, by wrapping the object it calls
(the numbers are the sample's own, not a second run): telemetry
(``Twin.telemetry``, the twin's catch-up simulation included), layout
(``Twin.nodes``), cost interval (``CostAccountant.interval``), metric points
(``core.monitor.metric_points`` as the monitor calls it), store write
(``SqlMetricSink.record_sample``), the whole sample, and its CPU time
(``time.process_time``: less moved than the wall time by other work on a busy
machine). It only uses names that exist in older checkouts too, so the same file
measures a baseline. The last line is machine-readable; the goal is a median
well under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import core.controller.monitor as monitor_module
from core.adapters.settings_source import load_settings
from core.clock import ManualClock
from core.controller.monitor import Monitor
from core.sim.twin import Twin, TwinConfig
from db.engine import make_engine, session_factory, upgrade
from db.stores import SqlMetricSink

SAMPLE_S = 30.0
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed start, so runs book the same hours
PHASES = ("telemetry", "layout", "cost interval", "metric points", "store write", "sample",
          "sample cpu")


class Timings:
    """Seconds spent per phase during the current sample."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.samples: list[dict[str, float]] = []

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - t0
        return run

    def finish(self) -> None:
        self.samples.append(self.current)
        self.current = {}


class _Metrics:
    def __init__(self, twin: Twin, timings: Timings) -> None:
        self.telemetry = timings.timed("telemetry", twin.telemetry)
        self.available = twin.available


class _Cluster:
    def __init__(self, twin: Twin, timings: Timings) -> None:
        self.nodes = timings.timed("layout", twin.nodes)
        self._twin = twin

    def __getattr__(self, name: str) -> Any:
        return getattr(self._twin, name)


class _Sink:
    def __init__(self, sink: SqlMetricSink, timings: Timings) -> None:
        self.record_sample = timings.timed("store write", sink.record_sample)


def _settings_file(base: Path, *, h100: int, a100: int) -> Path:
    path = base / "settings.toml"
    path.write_text(f"[fleet]\nH100 = {h100}\nA100 = {a100}\ngpus_per_node = 8\n")
    return path


def run(*, samples: int, h100: int, a100: int) -> tuple[Timings, int]:
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        base = Path(tmp)
        settings = load_settings(path=_settings_file(base, h100=h100, a100=a100), env={})
        clock = ManualClock(START)
        t0 = time.perf_counter()
        twin = Twin(settings, clock=clock, config=TwinConfig(warmup_s=300, seed=0))
        gpus = sum(len(n.gpus) for n in twin.nodes())
        engine = make_engine(f"sqlite:///{base / 'console.db'}")
        upgrade(engine)
        print(f"twin of {gpus} GPUs and a fresh SQLite store: "
              f"{time.perf_counter() - t0:.1f} s")
        timings = Timings()
        sink = SqlMetricSink(session_factory(engine), notify_alerts=False)
        monitor = Monitor(metrics=_Metrics(twin, timings), sink=_Sink(sink, timings),
                          interval_s=SAMPLE_S, cluster=_Cluster(twin, timings),
                          catalog=settings.catalog)
        assert monitor.costs is not None
        monitor.costs.interval = timings.timed(  # type: ignore[method-assign]
            "cost interval", monitor.costs.interval)
        points = monitor_module.metric_points
        monitor_module.metric_points = timings.timed("metric points", points)  # type: ignore[assignment]
        try:
            monitor.sample_once(persist=True)  # opens the first cost interval
            timings.current = {}
            for _ in range(samples):
                clock.advance(SAMPLE_S)
                cpu = time.process_time()
                timings.timed("sample", monitor.sample_once)(persist=True)
                timings.current["sample cpu"] = time.process_time() - cpu
                if monitor.state.error is not None:
                    raise SystemExit(f"sample failed: {monitor.state.error}")
                timings.finish()
        finally:
            monitor_module.metric_points = points  # type: ignore[assignment]
            engine.dispose()
        return timings, gpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--h100", type=int, default=200)
    parser.add_argument("--a100", type=int, default=425)
    args = parser.parse_args(argv)
    timings, gpus = run(samples=args.samples, h100=args.h100, a100=args.a100)
    print(f"{'phase':<14} {'median ms':>10} {'worst ms':>10}")
    for phase in PHASES:
        values = [1e3 * s.get(phase, 0.0) for s in timings.samples]
        print(f"{phase:<14} {statistics.median(values):>10.1f} {max(values):>10.1f}")
    whole = [1e3 * s["sample"] for s in timings.samples]
    print(f"monitor_sample gpus={gpus} median_ms={statistics.median(whole):.1f} "
          f"worst_ms={max(whole):.1f}")


if __name__ == "__main__":
    main()
