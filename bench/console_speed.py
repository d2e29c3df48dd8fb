"""Console speed: every page's server-side render, first paint in Chromium, and the
console's memory, for the default fleet and a 5,000-GPU twin with 30 days of history.

Run: ``python -m bench.console_speed [--fleet default|large|both] [--runs N]
[--skip-browser] [--days D] [--store DIR] [--backfill-hours H]``. With ``--store`` (one
fleet only) the store is kept in DIR and reused when DIR already holds one, for
iterating on a page.

History is written straight into a fresh SQLite store (no simulated month): one twin
sample gives the exact series the monitor stores (``core.monitor.metric_points``) and
their base values; each row carries a daily cycle and ±3 % noise. Fleet and per-model
series get every tier the monitor's roll-up and retention leave (raw 30 s samples for
``raw_hours``; fine buckets for ``fine_days`` and coarse buckets for ``coarse_days``,
both up to the last whole coarse bucket, as the monitor rolls each bucket up when it
ends). Per-GPU series of the large
fleet (15,000 series) get coarse buckets for the whole span and raw samples for the
last hour only: at full tiers they would be ~120 M rows (decided here, reported).
The console's memory is its peak resident set (VmHWM) over start-up and the page tour,
not only what it holds at the end: the goal is 500 MB at any time. So a second console
also starts on an empty store with the default 3 h history backfill (simulated and
streamed in while the Overview is open); the last line's ``rss_mb`` is the larger peak.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.adapters.settings_source import load_settings
from core.clock import ManualClock
from core.monitor import metric_points
from core.retention_settings import RetentionSettings
from core.sim.twin import Twin, TwinConfig
from db.engine import make_engine, upgrade

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "console_speed.txt"
ENTRY = str(ROOT / "app" / "streamlit_app.py")
SAMPLE_S = 30.0
HOUR, DAY = 3600.0, 86_400.0
BATCH = 50_000
LARGE_TOML = "[fleet]\nH100 = 200\nA100 = 425\ngpus_per_node = 8\n"
# Page file, title, url path, and the range widget: (kind, key, values).
PAGES: tuple[tuple[str, str, str, tuple[str, str, tuple[Any, ...]] | None], ...] = (
    ("overview", "Overview", "", ("button_group", "overview.range",
                                  ("1 h", "6 h", "24 h", "7 d", "30 d"))),
    ("fleet", "Fleet", "fleet", None),
    ("placement", "Placement", "placement", None),
    ("mps", "MPS planner", "mps", None),
    ("rollouts", "Rollouts", "rollouts", None),
    ("costs", "Cost reports", "costs", ("date_input", "costs.range", (7, 30))),
    ("weights", "Scheduler weights", "weights", None),
    ("autoscaling", "Autoscaling", "autoscaling", ("button_group", "autoscaling.range",
                                                   (1, 6, 24, 168))),
    ("evaluation", "Evaluation", "evaluation", None),
    ("audit", "Audit", "audit", ("selectbox", "audit.range", ("1 h", "24 h", "7 d", "30 d"))),
)
GOAL_PAGE_MS, GOAL_FIRST_S, GOAL_RSS_MB = 500.0, 2.5, 500.0
CHART = '.js-plotly-plot, [data-testid="stPlotlyChart"]'


@dataclass(frozen=True)
class Plan:
    """Which tiers a series gets, as spans back from ``now`` (seconds)."""

    raw_s: float
    fine_s: float
    coarse_s: float


def plans(retention: RetentionSettings, days: float, *, gpu_raw_s: float = HOUR
          ) -> tuple[Plan, Plan]:
    """(fleet and model series, per-GPU series) of the large fleet."""
    full = days * DAY
    raw = min(full, retention.raw_hours * HOUR)
    fine = min(full, retention.fine_days * DAY)
    coarse = min(full, retention.coarse_days * DAY)
    return Plan(raw, fine, coarse), Plan(min(raw, gpu_raw_s), 0.0, coarse)


def _value(base: float, ts: float, rng: random.Random) -> float:
    cycle = 1.0 + 0.15 * math.sin(2 * math.pi * (ts % DAY) / DAY)
    return base * cycle * rng.uniform(0.97, 1.03)


def sample_rows(series: Sequence[tuple[str, str, float]], *, start: float, end: float,
                step: float, rng: random.Random) -> Iterator[tuple[float, str, str, float]]:
    t = start
    while t < end:
        for metric, key, base in series:
            yield (t, metric, key, _value(base, t, rng))
        t += step


def rollup_rows(series: Sequence[tuple[str, str, float]], *, start: float, end: float,
                resolution: int, rng: random.Random
                ) -> Iterator[tuple[float, int, str, str, int, float, float, float]]:
    """Buckets as the roll-up writes them: count of 30 s samples, total, min, max."""
    n = int(resolution // SAMPLE_S) or 1
    t = start // resolution * resolution
    while t < end:
        for metric, key, base in series:
            mean = _value(base, t, rng)
            yield (t, resolution, metric, key, n, mean * n, mean * 0.97, mean * 1.03)
        t += resolution


def _batched(rows: Iterator[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_history(db: Path, series: Sequence[tuple[str, str, float]],
                  gpu_series: Sequence[tuple[str, str, float]], *, now: float,
                  retention: RetentionSettings, days: float, seed: int = 0) -> dict[str, int]:
    """Write the tiers (streamed in batches) into a migrated store; rows per table."""
    rng = random.Random(seed)
    main, per_gpu = plans(retention, days)
    fine, coarse = retention.fine_resolution_s, retention.coarse_resolution_s
    counts = {"metric_samples": 0, "metric_rollups": 0}
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        for group, plan in ((series, main), (gpu_series, per_gpu)):
            if not group:
                continue
            jobs: list[tuple[str, Iterator[Any]]] = [
                ("metric_samples", sample_rows(group, start=now - plan.raw_s, end=now,
                                               step=SAMPLE_S, rng=rng))]
            # The monitor rolls each coarse bucket into every tier as it ends, while the
            # raw samples stay for ``raw_hours``: the roll-ups reach the last whole
            # coarse bucket, over the raw samples' span too.
            rolled_until = now // coarse * coarse
            if plan.fine_s:
                jobs.append(("metric_rollups", rollup_rows(
                    group, start=now - plan.fine_s, end=rolled_until, resolution=fine,
                    rng=rng)))
            coarse_end = rolled_until if plan.fine_s else now - max(plan.fine_s, plan.raw_s)
            jobs.append(("metric_rollups", rollup_rows(
                group, start=now - plan.coarse_s, end=coarse_end, resolution=coarse,
                rng=rng)))
            for table, rows in jobs:
                sql = ("INSERT INTO metric_samples (ts, metric, key, value) VALUES (?,?,?,?)"
                       if table == "metric_samples" else
                       "INSERT INTO metric_rollups (bucket_ts, resolution_s, metric, key, "
                       "count, total, minimum, maximum) VALUES (?,?,?,?,?,?,?,?)")
                for batch in _batched(rows):
                    with conn:
                        conn.executemany(sql, batch)
                    counts[table] += len(batch)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return counts


def fleet_series(settings: Any) -> tuple[list[tuple[str, str, float]],
                                         list[tuple[str, str, float]], int]:
    """The monitor's series of one twin sample: (fleet and model, per-GPU, GPU count)."""
    twin = Twin(settings, clock=ManualClock(time.time()),
                config=TwinConfig(warmup_s=300, seed=0))
    points = metric_points(twin.telemetry(), layout=twin.nodes(), catalog=settings.catalog)
    main = [(p.metric, p.key, p.value) for p in points if not p.key.startswith("gpu=")]
    gpus = [(p.metric, p.key, p.value) for p in points if p.key.startswith("gpu=")]
    return main, gpus, sum(len(n.gpus) for n in twin.nodes())


def prepare(base: Path, fleet: str, days: float, *, reuse: bool = False
            ) -> tuple[dict[str, str], int, str]:
    """A store under ``base`` with history; the console's env, GPU count, and a summary.

    With ``reuse`` an existing store under ``base`` (from an earlier run) is kept."""
    env = {"DATABASE_URL": f"sqlite:///{base / 'console.db'}", "GSC_BACKFILL_HOURS": "0",
           "GSC_EMBEDDED_CONTROLLER": "0"}
    if fleet == "large":
        (base / "settings.toml").write_text(LARGE_TOML, encoding="utf-8")
        env["GSC_SETTINGS_FILE"] = str(base / "settings.toml")
    settings = load_settings(env={**os.environ, **env})
    if reuse and (base / "console.db").exists():
        size = (base / "console.db").stat().st_size / 2**20
        return env, _gpu_count(settings), (
            f"{fleet}: reused store {base / 'console.db'} ({size:.0f} MiB)")
    engine = make_engine(env["DATABASE_URL"])
    upgrade(engine)
    engine.dispose()
    started = time.perf_counter()
    main, gpus, count = fleet_series(settings)
    if fleet == "default":  # small: per-GPU series get every tier, like the rest
        main, gpus = main + gpus, []
    rows = write_history(base / "console.db", main, gpus, now=time.time(),
                         retention=settings.retention, days=days)
    size = (base / "console.db").stat().st_size / 2**20
    summary = (f"{fleet}: {count} GPUs, {len(main) + len(gpus):,} series; raw "
               f"{rows['metric_samples']:,} rows, roll-ups {rows['metric_rollups']:,}; store "
               f"{size:.0f} MiB; written in {time.perf_counter() - started:.0f} s")
    return env, count, summary


def _gpu_count(settings: Any) -> int:
    twin = Twin(settings, clock=ManualClock(time.time()), config=TwinConfig(warmup_s=0, seed=0))
    return sum(len(n.gpus) for n in twin.nodes())


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _set_range(at: Any, kind: str, key: str, value: Any) -> None:
    if kind == "date_input":
        today = at.date_input(key=key).value[1]
        at.date_input(key=key).set_value((today - timedelta(days=value - 1), today))
    else:
        getattr(at, kind)(key=key).set_value(value)


@contextmanager
def _store_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@contextmanager
def compiled_once() -> Iterator[None]:
    """AppTest as the server runs scripts: the server's Runtime keeps one ``ScriptCache``
    for every session and rerun, so the entry script and each page compile once. AppTest
    makes two new ones per run (its runner's and its pages manager's), which would add
    the compile (~50 ms a page, and more under load) to every figure."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    shared = ScriptCache()
    modules = (app_test, local_script_runner)
    saved = [m.ScriptCache for m in modules]  # type: ignore[attr-defined]
    for m in modules:
        m.ScriptCache = lambda: shared  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, old in zip(modules, saved, strict=True):
            m.ScriptCache = old  # type: ignore[attr-defined]


def render_times(env: dict[str, str], runs: int, only: set[str] | None = None
                 ) -> list[tuple[str, float, float, str]]:
    """(page [range], median ms, worst ms, error) of AppTest reruns of every page."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    out: list[tuple[str, float, float, str]] = []
    main = sys.modules["__main__"]
    with environment(env), compiled_once():
        st.cache_resource.clear()
        try:
            at = AppTest.from_file(ENTRY, default_timeout=300)
            at.run()
            # The server's start-up (app.prestart) freezes the long-lived objects once its
            # runtime is built (app.bootstrap.freeze_long_lived); the first AppTest run
            # built this one, so do as it does.
            gc.collect()
            gc.freeze()
            for page, _title, _url, ranges in PAGES:
                if only and page not in only:
                    continue
                at.switch_page(f"../pages/{page}.py")
                at.run()  # warm: first render fills the caches
                options = [None] if ranges is None else list(ranges[2])
                for option in options:
                    label = page if option is None else f"{page} [{option}]"
                    took: list[float] = []
                    for _ in range(runs):
                        if option is not None and ranges is not None:
                            _set_range(at, ranges[0], ranges[1], option)
                        begun = time.perf_counter()
                        try:
                            at.run()
                        except RuntimeError as exc:  # AppTest's timeout: recorded, not fatal
                            took.append((time.perf_counter() - begun) * 1000)
                            out.append((label, took[-1], took[-1], str(exc)[:60]))
                            return out
                        took.append((time.perf_counter() - begun) * 1000)
                    error = str(at.exception[0].message)[:60] if at.exception else ""
                    out.append((label, statistics.median(took), max(took), error))
        finally:
            st.cache_resource.clear()
            gc.unfreeze()
            sys.modules["__main__"] = main
    return out


def rss_mb(pid: int) -> tuple[float, float]:
    """(now, peak) resident memory of ``pid`` in MB: VmRSS and VmHWM, the high-water mark
    since the process started (the console runs as one process; its start-up counts)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def browser_times(base: Path, env: dict[str, str], only: set[str] | None = None
                  ) -> tuple[list[tuple[str, float, float | None]], tuple[float, float],
                             float]:
    """(page, s to title, s to charts or None) in Chromium, the console's RSS (now, peak)
    after the tour, and its start-up: from the server answering to a first page drawn
    (the runtime built: the twin, the store, the monitor). Pages are timed on the started
    console, the first one (the Overview) with every cache of its own still cold."""
    from tests.e2e.console import chromium, running_console

    rows: list[tuple[str, float, float | None]] = []
    console_env = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    with running_console(base, console_env) as url, chromium() as browser:
        page = browser.new_page()
        begun = time.perf_counter()
        page.goto(f"{url}/audit")  # a light page: it waits only for the runtime
        page.get_by_role("heading", name="Audit").first.wait_for(timeout=300_000)
        started = time.perf_counter() - begun
        for name, title, path, _ in PAGES:
            if only and name not in only:
                continue
            begun = time.perf_counter()
            page.goto(f"{url}/{path}")
            page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
            first = time.perf_counter() - begun
            charts: float | None = None
            try:
                page.locator(CHART).first.wait_for(timeout=15_000 if name != "overview"
                                                   else 120_000)
                page.wait_for_load_state("networkidle", timeout=60_000)
                charts = time.perf_counter() - begun
            except Exception:  # a page without charts: Playwright's timeout
                charts = None
            rows.append((name, first, charts))
        pid = console_pid(base)
        rss = rss_mb(pid) if pid else (float("nan"), float("nan"))
    return rows, rss, started


def backfill_peak(fleet_env: dict[str, str], hours: float, timeout_s: float = 900.0
                  ) -> tuple[float, float]:
    """(peak RSS MB, s until the history is loaded or nan) of a console that starts on an
    empty store and simulates the last ``hours`` (``backfill_hours``, default 3) while the
    Overview is open and its embedded controller runs, as ``make run`` does."""
    from tests.e2e.console import chromium, running_console

    env = {k: v for k, v in fleet_env.items()
           if k not in ("DATABASE_URL", "GSC_BACKFILL_HOURS", "GSC_EMBEDDED_CONTROLLER")}
    env["GSC_BACKFILL_HOURS"] = f"{hours:g}"
    with tempfile.TemporaryDirectory(prefix="gsc-backfill-") as tmp:
        base = Path(tmp)
        with running_console(base, env) as url, chromium() as browser:
            page = browser.new_page()
            begun = time.perf_counter()
            page.goto(f"{url}/")
            page.get_by_role("heading", name="Overview").first.wait_for(timeout=300_000)
            pid = console_pid(base)
            loading = page.get_by_text("history still loading")
            loaded = float("nan")
            while time.perf_counter() - begun < timeout_s:
                time.sleep(5)
                if loading.count() == 0:
                    loaded = time.perf_counter() - begun
                    break
            peak = rss_mb(pid)[1] if pid else float("nan")
    return peak, loaded


def console_pid(base: Path) -> int | None:
    """The ``app.serve`` process serving ``base``'s store (the newest one)."""
    want = str(base / "console.db").encode()
    best = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"app.serve" in (proc / "cmdline").read_bytes() and \
                    want in (proc / "environ").read_bytes():
                best = max(best or 0, int(proc.name))
        except OSError:
            continue
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", choices=("default", "large", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--backfill-hours", type=float, default=3.0,
                        help="also start a console on an empty store with this backfill and "
                             "report its peak RSS (0: skip; needs the browser)")
    parser.add_argument("--store", type=Path, default=None,
                        help="keep the store in this folder and reuse it (one fleet only)")
    parser.add_argument("--pages", default="",
                        help="comma-separated page files to time (default: every page)")
    args = parser.parse_args(argv)
    if args.store is not None and args.fleet == "both":
        parser.error("--store needs --fleet default or --fleet large")
    only = {p for p in args.pages.split(",") if p}
    unknown = only - {p[0] for p in PAGES}
    if unknown:
        parser.error(f"--pages: unknown page(s) {', '.join(sorted(unknown))}")
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    fleets = ("default", "large") if args.fleet == "both" else (args.fleet,)
    last = ""
    for fleet in fleets:
        with _store_dir(args.store) as base:
            env, gpus, summary = prepare(base, fleet, args.days, reuse=args.store is not None)
            say(summary)
            renders = render_times(env, args.runs, only)
            say(f"{'page [range]':28} {'median ms':>10} {'worst ms':>10}  goal ≤ "
                f"{GOAL_PAGE_MS:.0f} ms")
            for label, med, worst, error in renders:
                flag = "" if worst <= GOAL_PAGE_MS else "  OVER"
                say(f"{label:28} {med:10.0f} {worst:10.0f}{flag}"
                    + (f"  error: {error}" if error else ""))
            worst_page = max(r[2] for r in renders)
            first_worst, rss, now_rss = float("nan"), float("nan"), float("nan")
            if not args.skip_browser:
                browser, (now_rss, rss), started = browser_times(base, env, only)
                say(f"console start-up (server up → first page drawn): {started:.2f} s")
                say(f"{'browser page':28} {'title s':>10} {'charts s':>10}  goal ≤ "
                    f"{GOAL_FIRST_S:g} s")
                for name, first, charts in browser:
                    shown = "-" if charts is None else f"{charts:.2f}"
                    say(f"{name:28} {first:10.2f} {shown:>10}")
                first_worst = max(b[1] for b in browser)
                say(f"console RSS after every page: {now_rss:.0f} MB; peak since start-up "
                    f"{rss:.0f} MB (goal ≤ {GOAL_RSS_MB:.0f} at any time)")
                if args.backfill_hours > 0:
                    peak, loaded = backfill_peak(env, args.backfill_hours)
                    say(f"console on an empty store, {args.backfill_hours:g} h backfill, "
                        f"controller on, Overview open: history loaded in {loaded:.0f} s, "
                        f"peak RSS {peak:.0f} MB (goal ≤ {GOAL_RSS_MB:.0f} at any time)")
                    rss = max(rss, peak) if not math.isnan(peak) else peak  # unknown
            say(f"{fleet}: worst page {worst_page:.0f} ms (goal ≤ {GOAL_PAGE_MS:.0f}), worst "
                f"first content {first_worst:.2f} s (goal ≤ {GOAL_FIRST_S:g}), peak RSS "
                f"{rss:.0f} MB (goal ≤ {GOAL_RSS_MB:.0f})")
            last = (f"console_speed worst_page_ms={worst_page:.1f} "
                    f"worst_first_content_s={first_worst:.2f} rss_mb={rss:.1f} gpus={gpus} "
                    f"history_days={args.days:.0f}")
    say(last)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
