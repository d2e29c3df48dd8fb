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

