"""Rollout fault runs on the twin with a real store: kills, failures, and zero downtime.

Run: ``python -m bench.rollout_faults [--fault-trials N] [--seeds N] [--scale X]``.

The world is ``bench.rollout_world``'s (six single-A100 nodes on ``mps-4``, seven
replicas of four models placed through the real queue), serving the Azure LLM code
trace (``tests/data/azure_llm_inference_2023_code.csv``, replayed ``--scale`` times as
dense, repeating). Per strategy, each plan changes two nodes to ``mps-2``:

- **resumes**: one trial per step boundary of the plan: the controller is killed there
  (just after a step's RUNNING record, or just before its result), a new one built over
  the same store and twin; correct when the plan still succeeds and ``World.check``
  finds nothing wrong (no node cordoned, every node on the config the plan chose, every
  request bound or retired, every model back to its replicas);
- **rollbacks**: trials with a fault that must roll the plan back: an error spike on the
  canary node for canary, a device-plugin restart that does not come back on the first
  node for the others; correct when the plan is rolled back and the check passes;
- **extra failed requests**: the clean run of each seed against a control run of the
  same seed with no change, over the same simulated time.

The last line is machine-readable:
``rollout_faults trials=<int> correct=<int> cordoned_left=<int> extra_failed_requests=<int>``
(extra failed requests summed over rolling and blue-green, the strategies that migrate
without disruption; the others are printed per strategy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from bench.rollout_world import (
    T0,
    World,
    build_world,
    expected_replicas,
    make_plan,
    occupied_nodes,
)
from core.adapters.settings_source import load_settings
from core.rollout.analysis import Thresholds
from core.rollout.plan import Strategy
from core.settings import Settings
from core.sim import TraceReplay, read_trace
from core.sim import faults as fault_kinds
from core.sim.trace import Trace
from core.states import RolloutState
from db.engine import make_engine, session_factory, upgrade

TRACE = Path(__file__).resolve().parent.parent / "tests" / "data" / \
    "azure_llm_inference_2023_code.csv"
ZERO_DOWNTIME = (Strategy.ROLLING, Strategy.BLUE_GREEN)


@dataclass
class Tally:
    trials: int = 0
    resumes: int = 0
    resumes_ok: int = 0
    rollbacks: int = 0
    rollbacks_ok: int = 0
    cordoned: int = 0
    extra_failed: int = 0
    failed_change: int = 0  # failed requests in the clean runs, summed
    failed_control: int = 0  # and in their no-change controls
    failures: list[str] | None = None

    @property
    def correct(self) -> int:
        return self.resumes_ok + self.rollbacks_ok


class Runner:
    def __init__(self, *, settings: Settings, trace: Trace, scale: float, root: Path,
                 thresholds: Thresholds | None = None) -> None:
        self.settings = settings
        self.thresholds = thresholds or Thresholds()
        self.trace = trace
        self.scale = scale
        self.root = root
        self.count = 0
        path = root / "template.db"
        engine = make_engine(f"sqlite:///{path}")
        try:
            upgrade(engine)
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            engine.dispose()
        self.template = path.read_bytes()

    @contextmanager
    def factory(self) -> Iterator[sessionmaker[Session]]:
        self.count += 1
        path = self.root / f"trial-{self.count}.db"
        path.write_bytes(self.template)
        engine = make_engine(f"sqlite:///{path}")
        try:
            yield session_factory(engine)
        finally:
            engine.dispose()
            path.unlink(missing_ok=True)

    def world(self, factory: sessionmaker[Session], *, seed: int,
              kill_at: int | None = None) -> World:
        traffic = TraceReplay(self.trace, start=T0, scale=self.scale, repeat=True, seed=seed)
        w = build_world(settings=self.settings, factory=factory, seed=seed,
                        traffic=traffic, kill_at=kill_at)
        w.thresholds = self.thresholds
        w.engine = w.new_engine()
        return w

    def run(self, strategy: Strategy, *, seed: int, kill_at: int | None = None,
            fault: Callable[[World, list[str]], None] | None = None
            ) -> tuple[World, RolloutState, list[str], int, int]:
        """One plan to rest; (world, final state, problems, boundaries, failed requests)."""
        with self.factory() as factory:
            w = self.world(factory, seed=seed, kill_at=kill_at)
            nodes = occupied_nodes(w)[:2]
            plan = make_plan(w, strategy, nodes=nodes, window_s=300.0)
            if fault is not None:
                fault(w, nodes)
            pid = w.create(plan)
            state = w.settle(pid)
            w.twin.clear_faults()
            problems = w.check(plan, pid, expect_replicas=expected_replicas())
            if state is not RolloutState.SUCCEEDED and fault is None:
                problems += [f"{r.spec.label}: {r.details.get('error')}"
                             for r in w.rollout(pid).steps if r.status == "failed"]
            return w, state, problems, w.store.boundaries, failed_requests(w)

    def control(self, *, seed: int, until: float) -> int:
        with self.factory() as factory:
            w = self.world(factory, seed=seed)
            while w.clock.now() < until:
                w.tick()
            return failed_requests(w)


def failed_requests(w: World) -> int:
    t = w.twin.telemetry()
    return sum(d.counters.failure_total for d in t.deployments if d.counters)


def cordoned(w: World) -> int:
    return sum(1 for n in w.twin.nodes() if not n.schedulable)


def fault_for(strategy: Strategy, seed: int) -> Callable[[World, list[str]], None]:
    def inject(w: World, nodes: list[str]) -> None:
        if strategy is Strategy.CANARY:
            w.twin.inject(fault_kinds.error_spike(nodes[0], rate=0.3 + 0.05 * (seed % 4)))
        else:
            w.twin.inject(fault_kinds.plugin_restart_failure(nodes[seed % len(nodes)],
                                                             duration_s=240.0))
    return inject


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault-trials", type=int, default=15)
    # The code trace's ~2 k-token prompts take 5-10 s end to end on these MPS slices even
    # with no change at all, so SPEC's 2000 ms p99 would fail every check of every plan;
    # the checks here keep SPEC's 5 % error rate and judge p99 against this bound.
    parser.add_argument("--max-p99-ms", type=float, default=20_000.0)
    parser.add_argument("--seeds", type=int, default=2, help="clean runs against controls")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--trace", type=Path, default=TRACE)
    args = parser.parse_args(argv)
    settings = load_settings(env={})
    trace = read_trace(args.trace)
    started = time.perf_counter()
    tallies: dict[Strategy, Tally] = {}
    with tempfile.TemporaryDirectory(prefix="rollout-faults-") as tmp:
        runner = Runner(settings=settings, trace=trace, scale=args.scale, root=Path(tmp),
                        thresholds=Thresholds(max_p99_ms=args.max_p99_ms))
        rate = trace.size / trace.duration_s * args.scale
        print(f"trace: {trace.source}, ×{args.scale:g} ({rate:.1f} req/s), repeating; "
              f"checks fail at error rate > 5 % or p99 > {args.max_p99_ms:g} ms")
        print(f"{'strategy':<11} {'trials':>6} {'resumes ok':>11} {'rollbacks ok':>13} "
              f"{'cordoned':>9} {'extra failed':>13} {'change/control':>15} {'wall s':>7}")
        for strategy in Strategy:
            t0 = time.perf_counter()
            tally = tallies[strategy] = Tally(failures=[])
            boundaries = 0
            for seed in range(args.seeds):  # clean runs: zero downtime against a control
                w, state, problems, boundaries, failed = runner.run(strategy, seed=seed)
                control = runner.control(seed=seed, until=w.clock.now())
                tally.extra_failed += max(failed - control, 0)
                tally.failed_change += failed
                tally.failed_control += control
                tally.trials += 1
                tally.resumes += 1
                tally.cordoned += cordoned(w)
                if state is RolloutState.SUCCEEDED and not problems:
                    tally.resumes_ok += 1
                else:
                    tally.failures.append(f"clean seed {seed}: {state.value} {problems}")
            for kill_at in range(boundaries):
                w, state, problems, _, _ = runner.run(strategy, seed=kill_at % 3,
                                                      kill_at=kill_at)
                tally.trials += 1
                tally.resumes += 1
                tally.cordoned += cordoned(w)
                if state is RolloutState.SUCCEEDED and not problems and w.kills == 1:
                    tally.resumes_ok += 1
                else:
                    tally.failures.append(f"kill at {kill_at}: {state.value} kills={w.kills} "
                                          f"{problems}")
            for seed in range(args.fault_trials):
                w, state, problems, _, _ = runner.run(strategy, seed=seed,
                                                      fault=fault_for(strategy, seed))
                tally.trials += 1
                tally.rollbacks += 1
                tally.cordoned += cordoned(w)
                if state is RolloutState.ROLLED_BACK and not problems:
                    tally.rollbacks_ok += 1
                else:
                    tally.failures.append(f"fault seed {seed}: {state.value} {problems}")
            print(f"{strategy.value:<11} {tally.trials:>6} "
                  f"{tally.resumes_ok:>5}/{tally.resumes:<5} "
                  f"{tally.rollbacks_ok:>6}/{tally.rollbacks:<6} {tally.cordoned:>9} "
                  f"{tally.extra_failed:>13} "
                  f"{f'{tally.failed_change}/{tally.failed_control}':>15} "
                  f"{time.perf_counter() - t0:>7.1f}", flush=True)
            for line in tally.failures[:5]:
                print(f"    {line}")
    trials = sum(t.trials for t in tallies.values())
    correct = sum(t.correct for t in tallies.values())
    left = sum(t.cordoned for t in tallies.values())
    extra = sum(tallies[s].extra_failed for s in ZERO_DOWNTIME)
    print(f"wall {time.perf_counter() - started:.1f} s")
    print(f"rollout_faults trials={trials} correct={correct} cordoned_left={left} "
          f"extra_failed_requests={extra}")
    return 0 if correct == trials and left == 0 and extra == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
