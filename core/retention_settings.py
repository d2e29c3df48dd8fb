"""How long the metric history is kept, at which resolutions (settings section ``[retention]``).

Why: the monitor stores one point per series every monitor interval (about 115
points per 30 s sample for the default fleet: 330,000 rows a day). Without
retention the store grows by about 1 GB a month and a 30-day chart reads every
raw sample. The controller's leader therefore rolls raw samples up into two
coarser tiers and prunes each tier by age (``core.controller.retention``), and
charts read the tier that fits their range (``db.metrics.series``).

The tiers, finest first: raw samples (kept ``raw_hours``), ``fine_resolution_s``
buckets (kept ``fine_days``), ``coarse_resolution_s`` buckets (kept
``coarse_days``). Defaults: raw 48 h, 5 min for 8 days, 1 h for 35 days — so the
Overview's 1 h / 6 h / 24 h ranges read raw samples, 7 d reads 5-minute buckets
and 30 d hourly ones, each within ``chart_max_points``.

Invariants (checked here, so a bad file is refused at start-up naming the key):
- each coarser resolution is a whole multiple of the finer one, so buckets nest
  and a coarse bucket is exactly the sum of the fine ones it spans;
- each coarser tier is kept at least as long as the finer one (a chart's older
  part always has a coarser tier to fall back on);
- raw samples outlive the roll-up of their bucket (raw retention is longer than
  one coarse bucket plus the roll-up delay).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ValidationError
from core.validate import dataclass_from_table, integer, number

SECTION = "retention"


def _within(key: str, value: float, lo: float, hi: float) -> float:
    if not lo <= value <= hi:
        raise ValidationError(f"{SECTION}.{key}", f"must be within {lo:g}..{hi:g}")
    return value


@dataclass(frozen=True)
class RetentionSettings:
    """The ``[retention]`` table; times in seconds unless the name says hours or days."""

    # The leader's retention pass runs this often (a backlog continues every iteration).
    interval_s: float = 600.0
    raw_hours: float = 48.0
    fine_resolution_s: int = 300
    fine_days: float = 8.0
    coarse_resolution_s: int = 3600
    coarse_days: float = 35.0
    # A bucket is rolled up once it ended this long ago (samples still on their way).
    rollup_delay_s: float = 120.0
    # Rows per transaction: deleted at most, or raw samples read by a roll-up (whole coarse
    # buckets: one at least, more while they hold fewer samples than this together).
    batch_rows: int = 5000
    # A pass stops starting transactions after this long; the rest waits for the next
    # iteration, so the loop keeps renewing its lease.
    pass_budget_s: float = 1.0
    # The most points one chart reads (the series is averaged into wider buckets).
    chart_max_points: int = 500

    def __post_init__(self) -> None:
        def num(key: str, lo: float, hi: float) -> None:
            value = number(f"{SECTION}.{key}", getattr(self, key))
            object.__setattr__(self, key, _within(key, value, lo, hi))

        def whole(key: str, lo: int, hi: int) -> None:
            value = integer(f"{SECTION}.{key}", getattr(self, key))
            object.__setattr__(self, key, int(_within(key, value, lo, hi)))

        num("interval_s", 1, 86_400)
        num("raw_hours", 1, 24 * 90)
        whole("fine_resolution_s", 10, 86_400)
        num("fine_days", 1 / 24, 3650)
        whole("coarse_resolution_s", 10, 86_400)
        num("coarse_days", 1 / 24, 3650)
        num("rollup_delay_s", 0, 86_400)
        whole("batch_rows", 100, 1_000_000)
        num("pass_budget_s", 0.01, 60)
        whole("chart_max_points", 10, 100_000)
        if self.coarse_resolution_s % self.fine_resolution_s or \
                self.coarse_resolution_s == self.fine_resolution_s:
            raise ValidationError(f"{SECTION}.coarse_resolution_s",
                                  "must be a whole multiple (≥ 2) of fine_resolution_s")
        if self.fine_days * 24 < self.raw_hours:
            raise ValidationError(f"{SECTION}.fine_days",
                                  "must keep the fine tier at least as long as raw_hours")
        if self.coarse_days < self.fine_days:
            raise ValidationError(f"{SECTION}.coarse_days",
                                  "must keep the coarse tier at least as long as fine_days")
        if self.raw_hours * 3600 < self.coarse_resolution_s + self.rollup_delay_s:
            raise ValidationError(f"{SECTION}.raw_hours",
                                  "must outlast one coarse bucket plus rollup_delay_s")

    @property
    def raw_keep_s(self) -> float:
        return self.raw_hours * 3600

    @property
    def resolutions(self) -> tuple[int, int]:
        """The roll-up resolutions, finest first."""
        return self.fine_resolution_s, self.coarse_resolution_s

    @property
    def tiers(self) -> tuple[tuple[int, float], ...]:
        """``(resolution_s, kept_s)`` of each roll-up tier, finest first."""
        return ((self.fine_resolution_s, self.fine_days * 86_400),
                (self.coarse_resolution_s, self.coarse_days * 86_400))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RetentionSettings:
        """From the ``[retention]`` table; unknown keys are refused, naming the key."""
        return dataclass_from_table(cls, raw, section=SECTION)
