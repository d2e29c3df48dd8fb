"""Start-up backfill: wall time, peak memory and the longest lease renewal while it runs.

Run: ``python -m bench.backfill_memory [--hours 168] [--db FILE]``.

Builds the console's runtime (``app.bootstrap.build_runtime``, no controller, no
sampler) on a fresh SQLite file with ``GSC_BACKFILL_HOURS=<hours>`` on the default
fleet, and waits for the twin's history backfill to finish. Meanwhile a thread
renews a leader lease every 100 ms in its own transaction, as the controller does,
and records how long each renewal took: the longest is how long the backfill locked
the controller out. Resident memory is read from ``/proc/self/status`` every 100 ms
(and the kernel's peak, ``ru_maxrss``, at the end). The last line is machine-readable:

``backfill_memory hours=<float> wall_s=<float> peak_rss_mb=<float> max_lease_wait_s=<float>
lease_failures=<int> samples=<int> raw_rows=<int> rollup_rows=<int> db_mb=<float>``

(``samples``: fleet samples still raw; older ones are rolled up, in ``rollup_rows``.)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill_memory")
    parser.add_argument("--hours", type=float, default=168.0)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="gsc-backfill-"))
    db = args.db or folder / "store.db"
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["GSC_BACKFILL_HOURS"] = f"{args.hours:g}"
    os.environ["GSC_EMBEDDED_CONTROLLER"] = "0"

    from app.bootstrap import build_runtime
    from core.adapters.settings_source import load_settings
    from db.leases import acquire_lease
    from db.models import MetricRollupRow, MetricSampleRow

    settings = load_settings()
    peak = [rss_mb()]
    waits: list[float] = []
    stop = threading.Event()

    progress_of: list[Any] = []  # the runtime's backfill, once built

    def watch_memory() -> None:
        last_line = time.perf_counter()
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            if progress_of and time.perf_counter() - last_line >= 60:
                last_line = time.perf_counter()
                p = progress_of[0].progress()
                print(f"  {last_line - started:.0f} s: {p.done_hours:.1f} of "
                      f"{p.total_hours:.0f} h written, RSS {rss_mb():.0f} MB "
                      f"(peak {peak[0]:.0f} MB)", file=sys.stderr, flush=True)
            stop.wait(0.1)

    started = time.perf_counter()
    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    runtime = build_runtime(settings, background=False)

    failed: list[str] = []

    def renew() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                with runtime.factory.begin() as s:
                    acquire_lease(s, name="bench", holder="bench", now=datetime.now(UTC),
                                  ttl_seconds=15)
            except OperationalError as exc:  # locked out past the store's busy timeout
                failed.append(str(exc.orig))
            waits.append(time.perf_counter() - t0)
            stop.wait(0.1)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    backfill = runtime.backfill
    if backfill is not None:
        progress_of.append(backfill)
        backfill.join(timeout=None)
    wall = time.perf_counter() - started
    stop.set()
    renewer.join()
    watcher.join()
    with runtime.factory() as s:
        raw = s.scalar(select(func.count()).select_from(MetricSampleRow)) or 0
        ups = s.scalar(select(func.count()).select_from(MetricRollupRow)) or 0
        samples = s.scalar(select(func.count()).select_from(MetricSampleRow)
                           .where(MetricSampleRow.key == "fleet",
                                  MetricSampleRow.metric == "power_w")) or 0
    runtime.close()
    kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20
    print(f"peak RSS sampled {peak[0]:.0f} MB, kernel ru_maxrss {kernel_peak:.0f} MB; "
          f"{len(waits)} lease renewals, longest {max(waits, default=0):.3f} s, "
          f"{len(failed)} failed ({', '.join(sorted(set(failed))) or 'none'})",
          file=sys.stderr)
    print(f"backfill_memory hours={args.hours:g} wall_s={wall:.1f} "
          f"peak_rss_mb={max(peak[0], kernel_peak):.1f} "
          f"max_lease_wait_s={max(waits, default=0.0):.3f} lease_failures={len(failed)} "
          f"samples={samples} raw_rows={raw} "
          f"rollup_rows={ups} db_mb={size:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
