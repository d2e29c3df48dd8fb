"""The controller loop over ports alone: in-memory lease and queue, recording steps."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from core.clock import ManualClock
from core.controller import ControllerLoop
from core.ports import LeaseGrant, LeaseStore, QueueStats


class MemoryLeases:
    def __init__(self) -> None:
        self.holder: str | None = None
        self.expires = 0.0
        self.generation = 0
        self.requeued_from: list[str] = []

    def acquire(self, *, name: str, holder: str, now: float, ttl_s: float,
                renewing: bool) -> LeaseGrant | None:
        if self.holder not in (None, holder) and self.expires > now:
            return None
        previous = self.holder if self.holder not in (None, holder) else None
        if self.holder != holder:
            self.generation += 1
        if previous is not None and not renewing:
            self.requeued_from.append(previous)
        self.holder, self.expires = holder, now + ttl_s
        return LeaseGrant(name=name, holder=holder, generation=self.generation,
                          expires_at=self.expires, took_over_from=previous,
                          requeued=1 if previous else 0)

    def release(self, *, name: str, holder: str, now: float) -> bool:
        if self.holder == holder:
            self.expires = now
            return True
        return False


class NoQueue:
    def queue_counts(self) -> Mapping[str, int]:
        return {}


class Recorder:
    def __init__(self, name: str, *, leader_only: bool, every_s: float = 0.0,
                 log: list[tuple[str, float, bool]]) -> None:
        self.name = name
        self.leader_only = leader_only
        self.every_s = every_s
        self.next = float("-inf")
        self.log = log
        self.leadership: list[bool] = []

    def due(self, now: float) -> bool:
        return now >= self.next

    def run(self, *, now: float, leading: bool) -> None:
        self.next = now + self.every_s
        self.log.append((self.name, now, leading))

    def on_leadership(self, leading: bool) -> None:
        self.leadership.append(leading)


class Waiter(Recorder):
    """A long step that waits on the clock and calls the loop's heartbeat meanwhile."""

    loop: ControllerLoop

    def run(self, *, now: float, leading: bool) -> None:
        super().run(now=now, leading=leading)
        for _ in range(6):
            self.loop.clock.sleep(2)
            self.loop.heartbeat()


def loop(identity: str, leases: LeaseStore, clock: ManualClock, steps: list[Recorder]
         ) -> ControllerLoop:
    queue: QueueStats = NoQueue()
    return ControllerLoop(leases=leases, queue=queue, clock=clock, identity=identity,
                          steps=steps, lease_ttl_s=10, interval_s=1)


def test_only_the_leader_runs_leader_steps_and_a_standby_takes_over_after_expiry() -> None:
    clock, leases, log = ManualClock(0.0), MemoryLeases(), []
    a_steps = [Recorder("a.monitor", leader_only=False, log=log),
               Recorder("a.place", leader_only=True, log=log)]
    b_steps = [Recorder("b.monitor", leader_only=False, log=log),
               Recorder("b.place", leader_only=True, log=log)]
    a, b = loop("a", leases, clock, a_steps), loop("b", leases, clock, b_steps)
    a.step()
    b.step()
    assert (a.leading, b.leading) == (True, False)
    assert [(n, lead) for n, _, lead in log] == [
        ("a.monitor", True), ("a.place", True), ("b.monitor", False)]
    assert a_steps[1].leadership == [True] and b_steps[1].leadership == []
    clock.advance(11)  # a stopped renewing
    log.clear()
    b.step()
    assert b.leading and leases.requeued_from == ["a"]
    assert [n for n, _, _ in log] == ["b.monitor", "b.place"]
    assert b_steps[1].leadership == [True]


def test_a_long_step_keeps_the_lease_through_the_heartbeat_and_runs_due_steps() -> None:
    clock, leases, log = ManualClock(0.0), MemoryLeases(), []
    monitor = Recorder("monitor", leader_only=False, every_s=5, log=log)
    waiter = Waiter("place", leader_only=True, log=log)
    a = loop("a", leases, clock, [monitor, waiter])
    waiter.loop = a
    a.step()  # the waiter sleeps 12 s, longer than the 10 s TTL
    assert clock.now() == 12
    assert leases.holder == "a" and leases.expires > clock.now()
    assert [n for n, _, _ in log].count("monitor") == 3  # at 0, 6 and 10 s (every 5 s)
    assert loop("b", leases, clock, []).step() == 0  # the lease is still a's


def test_a_leader_that_cannot_renew_during_a_long_step_stops_at_once() -> None:
    clock, leases, log = ManualClock(0.0), MemoryLeases(), []
    after = Recorder("after", leader_only=True, log=log)
    waiter = Waiter("place", leader_only=True, log=log)
    a = loop("a", leases, clock, [waiter, after])
    waiter.loop = a
    real_acquire = leases.acquire

    def lose_at_4s(**kw: object) -> LeaseGrant | None:
        if clock.now() >= 4:
            return None  # another controller took the lease (say, after a pause of ours)
        return real_acquire(**kw)  # type: ignore[arg-type]

    leases.acquire = lose_at_4s  # type: ignore[method-assign]
    assert a.step() == 0
    assert not a.leading and waiter.leadership == [True, False]
    assert clock.now() == 4  # stopped at the first renewal that failed
    # "after" fell due during the wait and ran in the heartbeat at 2 s; nothing ran once
    # the lease was lost.
    assert [(n, t) for n, t, _ in log] == [("place", 0.0), ("after", 2.0)]


@pytest.mark.parametrize("leading", [True, False])
def test_steps_see_whether_they_lead(leading: bool) -> None:
    clock, leases, log = ManualClock(0.0), MemoryLeases(), []
    if not leading:
        leases.holder, leases.expires = "other", 1e9
    a = loop("a", leases, clock, [Recorder("s", leader_only=False, log=log)])
    a.step()
    assert log == [("s", 0.0, leading)]


class Failing(Recorder):
    """A step whose every run raises, as a store error in the monitor's roll-up would."""

    def run(self, *, now: float, leading: bool) -> None:
        super().run(now=now, leading=leading)
        raise RuntimeError("database is locked")


def test_a_failing_step_is_counted_and_the_steps_after_it_still_run() -> None:
    clock, leases, log = ManualClock(0.0), MemoryLeases(), []
    a = loop("a", leases, clock, [Failing("monitor", leader_only=False, log=log),
                                  Recorder("rollout", leader_only=True, log=log)])
    a.step()
    clock.advance(2)
    a.step()
    assert [n for n, _, _ in log] == ["monitor", "rollout", "monitor", "rollout"]
    assert a.leading
    failures = a.metrics.registry.get_sample_value(
        "gsc_controller_step_failures_total", {"step": "monitor"})
    assert failures == 2
    assert a.metrics.registry.get_sample_value(
        "gsc_controller_step_failures_total", {"step": "rollout"}) is None


def test_a_step_failing_inside_the_heartbeat_does_not_end_the_long_step() -> None:
    clock, leases, log = ManualClock(0.0), MemoryLeases(), []
    failing = Failing("monitor", leader_only=False, every_s=5, log=log)
    waiter = Waiter("place", leader_only=True, log=log)
    a = loop("a", leases, clock, [waiter, failing])
    waiter.loop = a
    a.step()
    assert clock.now() == 12  # the waiter waited its whole 12 s
    # Due every 5 s, it ran (and failed) in the heartbeats at 2 and 8 s.
    assert [t for n, t, _ in log if n == "monitor"] == [2.0, 8.0]
    assert a.metrics.registry.get_sample_value(
        "gsc_controller_step_failures_total", {"step": "monitor"}) == 2
