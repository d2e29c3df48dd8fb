"""Clocks: the one place in ``core`` that may read the wall clock.

``ManualClock`` moves only when told to (tests, simulations, benchmarks run
hours in milliseconds); ``SystemClock`` is the edge to real time. Invariant:
a clock never goes backwards.
"""

from __future__ import annotations

import math
import threading
import time

from core.errors import ValidationError


class ManualClock:
    """A clock that advances only through ``advance``/``sleep``; thread-safe."""

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValidationError("start", "must be a finite number of epoch seconds")
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (≥ 0); returns the new time."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValidationError("seconds", "must be a finite number ≥ 0")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Sleeping on a manual clock advances it at once."""
        self.advance(seconds)


class SystemClock:
    """Real time: ``time.time()`` and ``time.sleep()``."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class BackfillClock:
    """Manual until ``go_live``, then real time: for building history before serving.

    The embedded console runs its twin through the last hours on this clock
    (fast, in simulated time), then switches it to real time. It never goes
    backwards: going live before the manual time has caught up is refused.
    """

    def __init__(self, start: float) -> None:
        self._manual: ManualClock | None = ManualClock(start)
        self._real = SystemClock()

    @property
    def live(self) -> bool:
        return self._manual is None

    def now(self) -> float:
        manual = self._manual
        return self._real.now() if manual is None else manual.now()

    def advance_to(self, t: float) -> None:
        if self._manual is None:
            raise ValidationError("clock", "is live; it follows real time")
        self._manual.advance(max(0.0, t - self._manual.now()))

    def sleep(self, seconds: float) -> None:
        if self._manual is None:
            self._real.sleep(seconds)
        else:
            self._manual.advance(seconds)

    def go_live(self) -> None:
        if self._manual is not None and self._manual.now() > self._real.now():
            raise ValidationError("clock", "manual time is ahead of real time")
        self._manual = None
