"""The loop's cadence: no pause between iterations while a step has more work (a deep
queue drains at the speed of placement), the usual ``interval_s`` once it has none."""

from __future__ import annotations

import threading

from core.clock import ManualClock
from core.controller import ControllerLoop
from tests.unit.test_controller_steps import MemoryLeases, NoQueue


class Draining:
    """A leader step with ``n`` full batches of work; stops the loop after the last."""

    name = "placement"
    leader_only = True

    def __init__(self, batches: int) -> None:
        self.left = batches
        self.more_work = False
        self.runs = 0
        self.loop: ControllerLoop | None = None

    def due(self, now: float) -> bool:
        return True

    def run(self, *, now: float, leading: bool) -> None:
        self.runs += 1
        self.left -= 1
        self.more_work = self.left > 0
        if self.left <= 0 and self.loop is not None:
            self.loop.stop()


def test_the_loop_runs_again_at_once_while_a_step_has_more_work() -> None:
    step = Draining(batches=5)
    loop = ControllerLoop(leases=MemoryLeases(), queue=NoQueue(), clock=ManualClock(0.0),
                          identity="c", steps=[step], lease_ttl_s=7200, interval_s=3600)
    step.loop = loop
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    # With a 1 h interval, five iterations finish only if the loop never paused.
    thread.join(timeout=60)
    assert not thread.is_alive() and step.runs == 5


def test_more_work_counts_only_for_a_leader() -> None:
    step = Draining(batches=3)
    step.more_work = True
    loop = ControllerLoop(leases=MemoryLeases(), queue=NoQueue(), clock=ManualClock(0.0),
                          identity="c", steps=[step], lease_ttl_s=10, interval_s=1)
    assert not loop.more_work()  # a standby (not leading yet) keeps its cadence
    loop.step()
    assert loop.leading and loop.more_work()
    step.left = 1
    loop.step()
    assert not loop.more_work()
