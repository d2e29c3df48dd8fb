"""The retention step: the leader rolls the metric history up and prunes it by age.

Every ``[retention] interval_s`` the leader (``core.controller.loop``) runs one
pass over the ``RetentionStore``:

1. roll up every complete coarse bucket of raw samples not rolled up yet
   (older than ``rollup_delay_s``) into each tier (5 min and 1 h by default):
   per transaction one bucket, or several while they hold at most
   ``batch_rows`` samples together;
2. delete raw samples older than ``raw_hours`` — never one whose bucket is not
   rolled up yet, so a roll-up that falls behind loses nothing;
3. delete each tier's buckets older than its retention.

Invariants:
- every store call is one short transaction (at most ``batch_rows`` rows, or
  one coarse bucket of raw samples), so the store is never locked for long;
- a pass stops starting transactions once ``pass_budget_s`` has passed and the
  step is then due again at the next iteration (a backlog drains over several
  iterations), so the loop keeps renewing its lease between them; each phase
  still gets one transaction per pass, so every pass makes progress;
- the pass is idempotent: a new leader, or a pass cut short, carries on from
  what the store holds (the newest roll-up bucket), never from memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from core.ports import RetentionStore
from core.retention_settings import RetentionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetentionPass:
    """What one pass did; ``done`` is False when its budget ran out with work left."""

    at: float
    rolled: int = 0  # roll-up transactions (each one coarse bucket or more)
    buckets: int = 0  # roll-up rows written, over every tier
    pruned_raw: int = 0
    pruned_rollups: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    transactions: int = 0
    done: bool = True


class Retention:
    """One retention pass over the store (see the module docstring).

    ``timer``: a monotonic clock in seconds (``time.perf_counter``) that bounds a pass
    to ``pass_budget_s``; without one a pass runs until there is nothing left to do.
    """

    def __init__(self, *, store: RetentionStore, settings: RetentionSettings,
                 timer: Callable[[], float] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.timer = timer

    def run_pass(self, *, now: float) -> RetentionPass:
        cfg = self.settings
        deadline = None if self.timer is None else self.timer() + cfg.pass_budget_s
        transactions = 0

        def out_of_time() -> bool:
            return deadline is not None and self.timer is not None and self.timer() >= deadline

        resolutions = cfg.resolutions
        rolled_to = self.store.rolled_until(resolution_s=max(resolutions))
        rolled = buckets = 0
        while True:
            batch = self.store.roll_up_next(before_ts=now - cfg.rollup_delay_s,
                                            resolutions=resolutions, max_rows=cfg.batch_rows)
            transactions += 1
            if batch is None:
                break
            rolled, buckets, rolled_to = rolled + 1, buckets + batch.buckets, batch.end
            if out_of_time():  # the rest of the backlog waits for the next iteration
                return RetentionPass(at=now, rolled=rolled, buckets=buckets,
                                     transactions=transactions, done=False)

        def drain(delete: Callable[[], int]) -> tuple[int, bool]:
            nonlocal transactions
            total = 0
            while True:
                gone = delete()
                transactions += 1
                total += gone
                if gone < cfg.batch_rows:
                    return total, True
                if out_of_time():
                    return total, False

        # Raw samples go once they are old and their bucket is rolled up.
        pruned_raw, finished = 0, True
        if rolled_to is not None:
            cut = min(now - cfg.raw_keep_s, rolled_to)
            pruned_raw, finished = drain(lambda: self.store.prune_samples(
                before_ts=cut, limit=cfg.batch_rows))
        pruned: dict[int, int] = {}
        for resolution, kept_s in cfg.tiers:
            if not finished:
                break
            pruned[resolution], finished = drain(
                lambda r=resolution, k=kept_s: self.store.prune_rollups(
                    resolution_s=r, before_ts=now - k, limit=cfg.batch_rows))
        return RetentionPass(at=now, rolled=rolled, buckets=buckets, pruned_raw=pruned_raw,
                             pruned_rollups=MappingProxyType(pruned),
                             transactions=transactions, done=finished)


class RetentionStep:
    """The leader's retention pass every ``interval_s``, or at the next iteration while a
    backlog remains. Never run inside another step's heartbeat: it waits its turn."""

    name = "retention"
    leader_only = True
    runs_in_heartbeat = False

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self.last_pass: RetentionPass | None = None
        self._next: float | None = None

    def due(self, now: float) -> bool:
        return self._next is None or now >= self._next

    def run(self, *, now: float, leading: bool) -> None:
        # Set first: a pass that fails (the store is down) is retried an interval later.
        self._next = now + self.retention.settings.interval_s
        result = self.retention.run_pass(now=now)
        self.last_pass = result
        if not result.done:
            self._next = now  # a backlog: carry on at the next iteration
        if result.rolled or result.pruned_raw or any(result.pruned_rollups.values()):
            # Routine passes at debug level; a backlog (catching up) is worth an info line.
            log.log(logging.DEBUG if result.done else logging.INFO,
                    "retention: %d roll-up transactions (%d buckets written), "
                    "pruned %d raw samples and %s roll-ups%s", result.rolled, result.buckets,
                    result.pruned_raw, dict(result.pruned_rollups),
                    "" if result.done else "; more next iteration")


def retention_step(*, store: RetentionStore, settings: RetentionSettings,
                   timer: Callable[[], float] | None = None) -> RetentionStep:
    """The step as ``app.bootstrap.build_controller`` wires it."""
    return RetentionStep(Retention(store=store, settings=settings, timer=timer))
