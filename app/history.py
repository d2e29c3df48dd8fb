"""The twin's history backfill: the last ``backfill_hours`` simulated and streamed into
the store in the background, from the moment the runtime is built.

Why a stream: 30 days of the default fleet are 86,400 samples (about 10 million
points). Held in memory and written in one transaction they cost gigabytes and lock
the store (and the controller's lease) for minutes. Here the backfill writes one
batch at a time, at most one coarse roll-up bucket (``[retention]
coarse_resolution_s``, 1 h) of samples per batch, and at most ``BATCH_GPU_READINGS``
GPU readings (at 5,000 GPUs, 2 samples; a whole bucket of them, 120 samples with their
points, peaked at ~480 MB; half an hour of 5,000 GPUs peaked at 234 MB with batches of
5 samples, 203 MB with 2, equally fast, and 190 MB with 1, a third slower):

1. the batch's samples, alerts and cost lines in one transaction (the monitor's
   ``record_many``, as the live monitor stores them);
2. once the batch ends on a bucket boundary, a second short transaction rolls its
   buckets up into the tiers retention keeps for that age (both tiers, or the coarse
   one alone past ``fine_days``) and deletes the raw samples older than ``raw_hours``,
   so the store holds what the monitor and retention would have left it, and never
   the whole month of raw samples.

Memory stays bounded by one batch; pages read the store as it fills (a chart shows
the hours written so far) and ``Backfill.progress`` says how far it is.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.clock import ManualClock
from core.controller.monitor import Monitor
from core.model import Node
from core.monitor import FLEET
from core.settings import Settings
from core.sim.twin import Twin, TwinConfig
from core.telemetry import FleetTelemetry
from db import metrics
from db.stores import SqlMetricSink

log = logging.getLogger(__name__)
BATCH_GPU_READINGS = 10_000  # samples × GPUs held and stored at once


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """How far the backfill is: simulated hours written of the hours it fills."""

    done_hours: float
    total_hours: float
    samples: int
    finished: bool
    error: str | None = None

    def note(self) -> str | None:
        """What a chart says while the history is incomplete; None once it is whole."""
        if self.error is not None:
            return (f"history incomplete: the backfill stopped after {self.done_hours:.0f} "
                    f"of {self.total_hours:.0f} hours ({self.error})")
        if self.finished:
            return None
        return (f"history still loading: {math.floor(self.done_hours):.0f} of "
                f"{math.ceil(self.total_hours):.0f} hours")


class Backfill:
    """Simulates the last ``hours`` on a twin of the configured fleet, on its own clock
    (simulated time, fast), and streams them into ``factory``'s store; skips what the
    store already holds (a restarted console keeps its history).

    The span is fixed here, before any thread starts: from what the store holds before
    ``now`` (default: the time of the call) up to ``now``, so a live sample stored
    right after this (the monitor's first) is never mistaken for history already there.

    ``start=True`` runs it in a daemon thread (``join``, ``stop``); otherwise ``run``
    does it in the caller's thread. ``progress`` may be read from any thread;
    ``on_batch`` is called (in the backfill's thread) after every batch is stored.
    """

    def __init__(self, settings: Settings, factory: sessionmaker[Session], *, hours: float,
                 interval_s: float, seed: int = 0, start: bool = True,
                 now: float | None = None,
                 on_batch: Callable[[BackfillProgress], None] | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self.interval_s = interval_s
        self.seed = seed
        self.on_batch = on_batch
        self.now = time.time() if now is None else now
        with factory() as s:
            resume = metrics.resume_at(s, key=FLEET, before=self.now, interval_s=interval_s)
        self.start = max(self.now - hours * 3600, -math.inf if resume is None else resume)
        self.end = self.now - interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        total = max(0.0, (self.now - self.start) / 3600) if self.start < self.end else 0.0
        self._progress = BackfillProgress(done_hours=0.0, total_hours=total, samples=0,
                                          finished=total == 0.0)
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run_logged, name="gsc-backfill",
                                            daemon=True)
            self._thread.start()

    # ---- the thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop after the batch being written (what is stored stays: a later start
        carries on from it)."""
        self._stop.set()

    def progress(self) -> BackfillProgress:
        with self._lock:
            return self._progress

    def _set(self, progress: BackfillProgress) -> None:
        with self._lock:
            self._progress = progress

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception as exc:  # the console keeps running; the charts say why
            log.exception("history backfill failed")
            p = self.progress()
            self._set(BackfillProgress(done_hours=p.done_hours, total_hours=p.total_hours,
                                       samples=p.samples, finished=True,
                                       error=f"{type(exc).__name__}: {exc}"))

    # ---- the work

    def run(self) -> int:
        """Fill the history; returns the number of samples written."""
        now, start, end, interval = self.now, self.start, self.end, self.interval_s
        if start >= end:
            return 0
        total_h = self.progress().total_hours
        retention = self.settings.retention
        coarse = retention.coarse_resolution_s
        raw_from = now - retention.raw_keep_s
        fine_from = now - retention.tiers[0][1]
        clock = ManualClock(start)
        twin = Twin(self.settings, clock=clock,
                    config=TwinConfig(warmup_s=900, seed=self.seed,
                                      routing=self.settings.sim.routing,
                                      startup_delay_s=self.settings.sim.pod_startup_s))
        monitor = Monitor(metrics=twin, sink=SqlMetricSink(self.factory, notify_alerts=False),
                          interval_s=interval, thresholds=self.settings.alerts, cluster=twin,
                          catalog=self.settings.catalog)
        per_batch = max(1, BATCH_GPU_READINGS // max(1, twin.gpu_count))
        written = 0
        t = start
        while t < end and not self._stop.is_set():
            batch_start = t
            boundary = (math.floor(t / coarse) + 1) * coarse
            samples: list[FleetTelemetry] = []
            layouts: list[tuple[Node, ...] | None] = []
            while t < end and t < boundary and len(samples) < per_batch:
                clock.advance(max(0.0, t - clock.now()))
                samples.append(twin.telemetry())
                layouts.append(tuple(twin.nodes()))
                t += interval
            monitor.record_many(samples, layouts=layouts)  # one transaction
            written += len(samples)
            if t >= boundary:  # the buckets of this batch are complete: roll them up
                self._roll_up(start=math.floor(batch_start / coarse) * coarse, end=boundary,
                              fine=boundary > fine_from, prune=boundary <= raw_from)
            progress = BackfillProgress(done_hours=(min(t, now) - start) / 3600,
                                        total_hours=total_h, samples=written, finished=False)
            self._set(progress)
            if self.on_batch is not None:
                self.on_batch(progress)
        done = not self._stop.is_set()
        self._set(BackfillProgress(done_hours=total_h if done else (t - start) / 3600,
                                   total_hours=total_h, samples=written, finished=done))
        return written

    def _roll_up(self, *, start: float, end: float, fine: bool, prune: bool) -> None:
        """One short transaction: the batch's buckets into the tiers kept at its age, and
        its raw samples deleted when they are older than raw retention."""
        retention = self.settings.retention
        tiers = retention.resolutions if fine else (retention.coarse_resolution_s,)
        for attempt in (1, 2):
            try:
                with self.factory.begin() as s:
                    metrics.roll_up_span(s, start=start, end=end, resolutions=tiers)
                    if prune:
                        metrics.delete_samples_between(s, start=start, end=end)
                return
            except IntegrityError:
                # The leader's retention pass rolled one of these buckets up meanwhile:
                # the second try finds it there and leaves it alone.
                if attempt == 2:
                    raise


def refresh_s(range_s: float) -> float:
    """How often a chart of ``range_s`` seconds is re-read and redrawn: about one of its
    720 points, from 5 s (1 h) up to 5 min (7 d and longer)."""
    return min(300.0, max(5.0, range_s / 720))


def backfill_history(settings: Settings, factory: sessionmaker[Session], *, hours: float,
                     interval_s: float, seed: int = 0) -> int:
    """Fill the history in the caller's thread (tests, benchmarks); see ``Backfill``."""
    return Backfill(settings, factory, hours=hours, interval_s=interval_s, seed=seed,
                    start=False).run()
