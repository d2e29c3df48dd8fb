"""The twin's traffic engine: simulated time, requests served by replicas, power per GPU.

Why: the twin's fleet must respond to traffic the way model servers do
(queues, co-runner slowdown, batching, latency, power) fast enough to replay
hours in seconds. Simulation advances in whole ticks (1 s by default), in
chunks that end wherever something changes (a pod becomes Running, a fault
expires, a device plugin comes up). Within a chunk all ticks and all requests
are computed at once with NumPy: per-tick offered work per replica, co-runner
slowdown, the Lindley recursion for each replica's queue (vectorized through
cumulative sums), Little's-law concurrency, utilization, power and energy per
GPU, then every request's latency, TTFT, time per output token, success and
histogram bucket. Requests reach a deployment's replicas by least outstanding
work (``TwinConfig.routing = "least_work"``, as the llm-d and AIBrix gateways
route: sequentially over the chunk's requests, each to the replica whose
outstanding work plus this request's, in its own seconds, is least; work counts
as outstanding while its replica is still busy with it, which for a batched
server is the whole load window, not only its queue — what the gateways' queue
and KV-cache-utilization scorers see together) or uniformly at random
(``"uniform"``, as a Kubernetes Service does).

Invariants:
- every arriving request is counted exactly once, in the tick it arrives
  (success or failure is decided there): a request routed to a replica whose
  pod failed but whose endpoints are not yet removed fails, and so does one
  whose deployment has no replica with endpoints;
- replica rows are append-only; a row stops serving for good when its pod is
  retired (deleted, evicted) or fails;
- power stays within [idle, TDP] for a working GPU (0 for a failed one) and
  energy never decreases;
- nothing inside a chunk changes state; the same seed, chunks and calls give
  the same results.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from core.sim.books import Books
from core.sim.config import TwinConfig
from core.sim.faults import FaultEffects
from core.sim.perf_model import (
    _MAX_PREFILL_FRACTION as _MAX_PREFILL,
)
from core.sim.perf_model import (
    PerfModel,
    iteration_time,
    power_w,
    solve_concurrency,
)
from core.sim.pods import PodRecord
from core.sim.tables import GpuTable
from core.sim.traffic import Arrivals, ArrivalSource, assign_deployments


@dataclass(slots=True)
class Replicas:
    """Append-only columns, one row per replica (a scheduled pod) ever created."""

    gpu: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    deployment: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    share: np.ndarray = field(default_factory=lambda: np.empty(0))
    # k1, k2, k3, k4, k5, kp, max batch
    params: np.ndarray = field(default_factory=lambda: np.empty((0, 7)))
    queue: np.ndarray = field(default_factory=lambda: np.empty(0))  # waiting work (slice-s)
    mean_work: np.ndarray = field(default_factory=lambda: np.empty(0))  # slice-s per request
    prefill_frac: np.ndarray = field(default_factory=lambda: np.empty(0))  # of that work
    concurrency: np.ndarray = field(default_factory=lambda: np.empty(0))
    # Work served per second over the last (load window − 1) ticks, oldest first.
    recent: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    def add(self, *, gpu: int, deployment: int, share: float, params: tuple[float, ...],
            mean_work: float, prefill_frac: float) -> int:
        self.gpu = np.append(self.gpu, gpu)
        self.deployment = np.append(self.deployment, deployment)
        self.share = np.append(self.share, share)
        self.params = np.vstack([self.params, np.array(params, dtype=np.float64)])
        self.queue = np.append(self.queue, 0.0)
        self.mean_work = np.append(self.mean_work, mean_work)
        self.prefill_frac = np.append(self.prefill_frac, prefill_frac)
        self.concurrency = np.append(self.concurrency, 0.0)
        self.recent = np.hstack([self.recent, np.zeros((self.recent.shape[0], 1))])
        return int(self.gpu.shape[0] - 1)


@dataclass(frozen=True, slots=True)
class Live:
    """The replicas with endpoints during one chunk (columns, one row per replica)."""

    idx: np.ndarray  # rows of ``Replicas``
    serving: np.ndarray  # False: failed, endpoints not yet removed (requests fail)
    gpu: np.ndarray
    deployment: np.ndarray
    share: np.ndarray
    params: np.ndarray
    latency_factor: np.ndarray
    error_rate: np.ndarray

    @property
    def size(self) -> int:
        return int(self.idx.shape[0])


CHUNK_GPU_TICKS = 150_000  # the most ticks × GPUs one chunk simulates at once


class TrafficEngine:
    """Simulated time on a tick grid, the replicas serving traffic, and the GPUs' readings."""

    def __init__(self, *, config: TwinConfig, perf: PerfModel, traffic: ArrivalSource,
                 gpus: GpuTable, origin: float) -> None:
        self.config = cfg = config
        self.perf = perf
        self.traffic = traffic
        self.gpus = gpus
        self.rng = np.random.default_rng([cfg.seed, 11])
        # --- time grid --------------------------------------------------------------------
        self.tick_s = cfg.tick_s
        self.origin = origin
        self.ticks = 0
        ring_len = math.ceil(3600.0 / cfg.tick_s) + 1
        ticks_per_hslot = max(1, round(cfg.histogram_slot_s / cfg.tick_s))
        hslot_s = ticks_per_hslot * cfg.tick_s
        self.hist_window = max(1, math.ceil(300.0 / hslot_s))
        hist_len = max(self.hist_window, math.ceil(cfg.max_chunk_s / hslot_s) + 1) + 2
        # A chunk's working set is a few arrays per request and one row per GPU and tick:
        # at 5,000 GPUs a 300-tick chunk peaked at ~370 MB. Its length is capped so that
        # ticks × GPUs stays within CHUNK_GPU_TICKS (fleets up to 500 GPUs keep
        # max_chunk_s); shorter chunks simulate the same traffic no slower.
        self.max_chunk = max(1, min(int(cfg.max_chunk_s / cfg.tick_s),
                                    CHUNK_GPU_TICKS // max(1, gpus.count)))
        self.books = Books(gpu_count=gpus.count, tick_s=cfg.tick_s, ring_len=ring_len,
                           hist_len=hist_len, ticks_per_hslot=ticks_per_hslot,
                           explicit_weights=dict(cfg.traffic_weights or {}),
                           slo_targets=dict(cfg.slo_targets or {}))
        # --- replicas and GPU readings ----------------------------------------------------
        self.load_window = max(1, round(cfg.load_window_s / cfg.tick_s))
        self.rep = Replicas(recent=np.zeros((self.load_window - 1, 0)))
        self.rep_alive = np.empty(0, dtype=bool)
        self.util = gpus.initial_util.copy()
        self.power = gpus.initial_power.copy()
        self.energy = np.zeros(gpus.count)

    @property
    def simulated_until(self) -> float:
        """Epoch time up to which the simulation has run (on the tick grid)."""
        return self.origin + self.ticks * self.tick_s

    def target_ticks(self, now: float) -> int:
        """The whole ticks between the origin and ``now``."""
        return math.floor((now - self.origin) / self.tick_s + 1e-9)

    # --- replicas -----------------------------------------------------------------------
    def start_pod(self, pod: PodRecord, at: float) -> None:
        """``pod`` is admitted onto its GPU at ``at``: it gets a deployment and a replica."""
        row = self.gpus.row_of[(pod.node, pod.gpu_index)]
        pod.scheduled_at = at
        pod.ready_at = at + self.config.startup_delay_s
        pod.deployment = self.books.deployment(pod.namespace, pod.model)
        p = self.perf.params_for(pod.workload_class, self.gpus.gpu_type[row])
        share = pod.thread_pct / 100.0
        prompt, output = self.config.reference_prompt_tokens, self.config.reference_output_tokens
        ref = p.work_s(prompt, output, share)
        pod.replica = self.rep.add(
            gpu=row, deployment=pod.deployment, share=share,
            params=(p.k1, p.k2, p.k3, p.k4, p.k5, p.kp, float(p.max_batch)), mean_work=ref,
            prefill_frac=p.prefill_s(prompt, share) / ref)
        self.rep_alive = np.append(self.rep_alive, True)

    def retire(self, pod: PodRecord) -> None:
        """``pod``'s replica serves no more (it was deleted or evicted)."""
        if pod.replica >= 0:
            self.rep_alive[pod.replica] = False

    def init_weights(self, held: dict[int, list[PodRecord]]) -> None:
        """Traffic shares ∝ each deployment's capacity for the reference request.

        Operators size deployments to their traffic, so a fleet in its initial
        layout is evenly loaded; explicit ``traffic_weights`` override this.
        """
        capacity = np.zeros(len(self.books.keys))
        for row, pods in held.items():
            for p in pods:
                capacity[p.deployment] += self.perf.max_throughput_rps(
                    p.workload_class, self.gpus.gpu_type[row], share=p.thread_pct / 100.0,
                    prompt_tokens=self.config.reference_prompt_tokens,
                    output_tokens=self.config.reference_output_tokens,
                    co_runners=len(pods) - 1)
        self.books.set_implicit_weights(capacity)

    # --- the simulation -----------------------------------------------------------------
    def chunk_length(self, target: int, *, events: Iterable[float]) -> int:
        """Ticks of the next chunk: up to ``target``, at most ``max_chunk``, ending at the
        first tick at or after any of ``events`` (times after ``simulated_until``)."""
        t0 = self.simulated_until
        ends = [target - self.ticks, self.max_chunk]
        for event in events:
            ends.append(max(1, math.ceil((event - t0) / self.tick_s - 1e-9)))
        return max(1, min(ends))

    def simulate(self, k_ticks: int, *, pods: Iterable[PodRecord], eff: FaultEffects) -> None:
        """Advance ``k_ticks`` ticks; nothing changes state-wise inside the chunk."""
        tick = self.tick_s
        t0 = self.simulated_until
        books = self.books
        live = self._live_replicas(t0, eff, pods)
        arrivals = self.traffic.arrivals(t0, t0 + k_ticks * tick)
        if not books.keys or float(books.weight.sum()) <= 0:
            arrivals = Arrivals.empty()  # no deployment to send requests to
        n_req = len(arrivals)
        dep_i = assign_deployments(n_req, weights=books.weight, rng=self.rng) if n_req \
            else np.zeros(0, dtype=np.int64)
        if eff.traffic_factor and n_req:
            arrivals, dep_i = self._surge(arrivals, dep_i, eff=eff, end=t0 + k_ticks * tick)
            n_req = len(arrivals)
        if self.config.routing == "uniform":
            j_i = self._route(dep_i, live)
        else:
            j_i = self._route_least_work(dep_i, live, arrivals=arrivals, queue=self.rep.queue)
        k_i = np.clip(((arrivals.times - t0) / tick).astype(np.int64), 0, k_ticks - 1)

        carry = self.rep.queue  # replicas that do not serve in this chunk lose their queue
        self.rep.queue = np.zeros_like(carry)
        self.rep.concurrency = np.zeros_like(self.rep.concurrency)
        gpu_util = np.zeros((k_ticks, self.gpus.count))
        latency = np.zeros(n_req)
        ttft = np.zeros(n_req)
        tpot = np.zeros(n_req)
        served = j_i >= 0
        ok = served.copy()
        if live.size:
            jj = np.where(served, j_i, 0)
            served &= live.serving[jj]
            latency, ttft, tpot = self._run_replicas(live, arrivals=arrivals, j_i=jj, k_i=k_i,
                                               served=served, queue_before=carry[live.idx],
                                               gpu_util=gpu_util)
            ok = served & (latency <= self.config.request_timeout_s) & \
                (self.rng.random(n_req) >= live.error_rate[jj])
            gpu_i = np.where(served, live.gpu[jj], -1)
        else:
            gpu_i = np.full(n_req, -1, dtype=np.int64)
        books.account(ticks=self.ticks, k_ticks=k_ticks, k_i=k_i, dep_i=dep_i, ok=ok,
                      served=served, gpu_i=gpu_i, prompt=arrivals.prefill_tokens,
                      output=arrivals.decode_tokens, latency=latency, ttft=ttft, tpot=tpot)
        self._power(gpu_util, eff=eff)
        self.ticks += k_ticks

    def _surge(self, arrivals: Arrivals, dep_i: np.ndarray, *, eff: FaultEffects, end: float
               ) -> tuple[Arrivals, np.ndarray]:
        """Add copies of surging deployments' requests (factor f: f − 1 copies on average,
        each a little later within its tick), keeping arrivals sorted by time."""
        copies = np.zeros(len(arrivals), dtype=np.int64)
        for d, (_, model) in enumerate(self.books.keys):
            factor = eff.traffic_factor.get(model)
            if factor is None or factor <= 1.0:
                continue
            mine = np.flatnonzero(dep_i == d)
            extra = factor - 1.0
            copies[mine] = int(extra) + (self.rng.random(mine.size) < extra - int(extra))
        if not copies.any():
            return arrivals, dep_i
        src = np.repeat(np.arange(len(arrivals)), copies)
        times = np.minimum(arrivals.times[src] + self.rng.random(src.size) * self.tick_s,
                           np.nextafter(end, -np.inf))
        all_times = np.concatenate([arrivals.times, times])
        order = np.argsort(all_times, kind="stable")
        merged = Arrivals(all_times[order],
                          np.concatenate([arrivals.prefill_tokens,
                                          arrivals.prefill_tokens[src]])[order],
                          np.concatenate([arrivals.decode_tokens,
                                          arrivals.decode_tokens[src]])[order])
        return merged, np.concatenate([dep_i, dep_i[src]])[order]

    def _live_replicas(self, t0: float, eff: FaultEffects, pods: Iterable[PodRecord]) -> Live:
        """Replicas with endpoints in this chunk: Running ones, and failed ones whose
        endpoints readiness probes have not removed yet (requests sent there fail).
        A terminating (evicted) pod has left its endpoints."""
        live: list[int] = []
        serving: list[bool] = []
        grace = self.config.endpoint_grace_s
        for p in pods:
            if p.replica < 0 or p.ready_at is None or p.node in eff.not_ready_nodes \
                    or p.deleting_at is not None:
                continue
            if p.failed_at is None and p.ready_at <= t0:
                live.append(p.replica)
                serving.append(True)
            elif p.failed_at is not None and p.ready_at <= p.failed_at < t0 + grace:
                live.append(p.replica)
                serving.append(False)
        idx = np.array(live, dtype=np.int64)
        rep = self.rep
        gpu = rep.gpu[idx]
        g_node = self.gpus.node
        nodes = [g_node[g] for g in gpu]
        return Live(idx=idx, serving=np.array(serving, dtype=bool), gpu=gpu,
                    deployment=rep.deployment[idx], share=rep.share[idx],
                    params=rep.params[idx],
                    latency_factor=np.array([eff.latency_factor.get(n, 1.0) for n in nodes]),
                    error_rate=np.array([eff.error_rate.get(n, 0.0) for n in nodes]))

    def _route(self, dep_i: np.ndarray, live: Live) -> np.ndarray:
        """Each request goes to a live replica of its deployment, chosen uniformly (as a
        Service does); -1 where the deployment has none."""
        n_req = dep_i.size
        if not live.size or not n_req:
            return np.full(n_req, -1, dtype=np.int64)
        order = np.argsort(live.deployment, kind="stable")
        per_dep = np.bincount(live.deployment, minlength=len(self.books.keys))
        first = np.cumsum(per_dep) - per_dep
        available = per_dep[dep_i]
        pick = first[dep_i] + np.floor(self.rng.random(n_req) * available).astype(np.int64)
        return np.where(available > 0, order[np.minimum(pick, live.size - 1)], -1)

    def _route_least_work(self, dep_i: np.ndarray, live: Live, *, arrivals: Arrivals,
                          queue: np.ndarray) -> np.ndarray:
        """Each request goes to the replica of its deployment with the least outstanding
        work, counting its own (as the llm-d and AIBrix gateways route): outstanding work is
        the replica's queue at the chunk's start plus what it was sent since, in seconds of
        its own time (co-runner slowdown and node latency included), draining one second
        per second. -1 where the deployment has no replica with endpoints."""
        n_req = dep_i.size
        out = np.full(n_req, -1, dtype=np.int64)
        if not live.size or not n_req:
            return out
        k1, k2, k3, k4, k5, kp, bmax = (live.params[:, i] for i in range(7))
        t_full = iteration_time(bmax, live.share, k1=k1, k2=k2, k3=k3, k4=k4, k5=k5)
        per_gpu = np.bincount(live.gpu, minlength=int(live.gpu.max()) + 1)
        m = (1.0 + self.perf.co_runner_slowdown * (per_gpu[live.gpu] - 1)) * live.latency_factor
        sec_prompt = (kp / (live.share + k4) * m).tolist()
        sec_output = (t_full / bmax * m).tolist()
        # Outstanding at the chunk's start: the queue, and what the replica served over the
        # last load window (it is still decoding those requests), both in its own seconds.
        served = self.rep.recent[:, live.idx].sum(axis=0) * self.tick_s
        outstanding = (queue[live.idx] + served) * m
        return least_work_picks(dep_i, deployment=live.deployment, sec_prompt=sec_prompt,
                                sec_output=sec_output, outstanding=outstanding.tolist(),
                                arrivals=arrivals, drain_s=self.load_window * self.tick_s)

    def _run_replicas(self, live: Live, *, arrivals: Arrivals, j_i: np.ndarray,
                      k_i: np.ndarray, served: np.ndarray, queue_before: np.ndarray,
                      gpu_util: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every tick of every live replica at once; returns each request's latency, TTFT
        and time per output token (the gap between its tokens after the first).

        Writes the GPUs' utilization per tick into ``gpu_util`` and leaves each replica's
        queue, concurrency, mean work and prefill fraction in ``self.rep``.
        """
        tick, rep, n_live = self.tick_s, self.rep, live.size
        k_ticks = gpu_util.shape[0]
        k1, k2, k3, k4, k5, kp, bmax = (live.params[:, i] for i in range(7))
        share = live.share
        k = {"k1": k1, "k2": k2, "k3": k3, "k4": k4, "k5": k5}
        prompt, output = arrivals.prefill_tokens, arrivals.decode_tokens

        # Work of each request, in seconds of a saturated slice: prefill + decode at full batch.
        t_full = iteration_time(bmax, share, **k)
        pre_s = prompt * (kp / (share + k4))[j_i]
        work = pre_s + output * (t_full / bmax)[j_i]
        on = j_i[served]
        offered = np.bincount(k_i[served] * n_live + on, weights=work[served],
                              minlength=k_ticks * n_live).reshape(k_ticks, n_live)
        count = np.bincount(on, minlength=n_live)
        work_sum = np.bincount(on, weights=work[served], minlength=n_live)
        pre_sum = np.bincount(on, weights=pre_s[served], minlength=n_live)
        seen = count > 0
        idx = live.idx
        rep.mean_work[idx] = np.where(seen, work_sum / np.maximum(count, 1), rep.mean_work[idx])
        pre_frac = np.where(seen, pre_sum / np.maximum(work_sum, 1e-12), rep.prefill_frac[idx])
        rep.prefill_frac[idx] = pre_frac

        # Queues: the Lindley recursion q_k = max(0, q_{k−1} + offered_k − capacity_k), all ticks
        # at once through cumulative sums. Capacity depends on the co-runner slowdown, which
        # depends on which clients are active (offered work or a queue): two passes settle it.
        q0 = np.where(live.serving, queue_before, 0.0)
        gpus_used, g_local = np.unique(live.gpu, return_inverse=True)
        n_gpu = gpus_used.size
        kg = (np.arange(k_ticks)[:, None] * n_gpu + g_local[None, :]).ravel()
        slow = self.perf.co_runner_slowdown

        def queues(active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            per_gpu = np.bincount(kg, weights=active.ravel().astype(np.float64),
                                  minlength=k_ticks * n_gpu).reshape(k_ticks, n_gpu)
            m = (1.0 + slow * (per_gpu[:, g_local] - active)) * live.latency_factor
            s = np.cumsum(offered - tick / m, axis=0)
            return m, np.maximum(s - np.minimum(-q0, np.minimum.accumulate(s, axis=0)), 0.0)

        active = offered > 0
        active[0] |= q0 > 0
        m, q = queues(active)
        q_before = np.vstack([q0[None, :], q[:-1]])
        settled = (offered > 0) | (q_before > 0)
        if not np.array_equal(active, settled):
            m, q = queues(settled)
            q_before = np.vstack([q0[None, :], q[:-1]])
        done = (offered + q_before - q) / tick  # saturated-slice seconds served per second
        rho = np.minimum(done * m, 1.0)

        # Latency responds to the load of the last few seconds, not of one tick: a long
        # prompt fills its own tick but does not slow its own decode for long.
        window = self.load_window
        history = np.vstack([rep.recent[:, idx], done])
        sums = np.vstack([np.zeros((1, n_live)), np.cumsum(history, axis=0)])
        recent = (sums[window:] - sums[:-window]) / window
        rep.recent[:] = 0.0
        rep.recent[:, idx] = history[history.shape[0] - (window - 1):]
        f_p = np.minimum(np.minimum(recent * m, 1.0) * pre_frac, _MAX_PREFILL)
        decode_rate = recent * (1.0 - pre_frac) * (bmax / t_full) / (1.0 - f_p)
        conc = np.where(live.serving,
                        solve_concurrency(decode_rate, share, slowdown=m, max_batch=bmax, **k),
                        0.0)
        wait = 0.5 * (q_before + q) * m
        step = m * iteration_time(np.maximum(conc, 1.0), share, **k)
        stretch = 1.0 / (1.0 - f_p)

        # Utilization: thread share × the fraction of the slice's peak throughput in use.
        busy = np.where(live.serving, share * rho, 0.0)
        per_gpu = np.bincount(kg, weights=busy.ravel(),
                              minlength=k_ticks * n_gpu).reshape(k_ticks, n_gpu)
        gpu_util[:, gpus_used] = np.minimum(per_gpu, 1.0)
        rep.queue[idx] = np.where(live.serving, q[-1], 0.0)
        rep.concurrency[idx] = conc[-1] + np.where(live.serving, f_p[-1], 0.0)

        step_i = step[k_i, j_i]
        ttft = wait[k_i, j_i] + m[k_i, j_i] * pre_s + step_i
        tpot = step_i * stretch[k_i, j_i]
        latency = ttft + np.maximum(output - 1, 0) * tpot
        return latency, ttft, tpot

    def _power(self, gpu_util: np.ndarray, *, eff: FaultEffects) -> None:
        """Power and energy per GPU (a failed GPU draws nothing); smoothed readings."""
        k_ticks = gpu_util.shape[0]
        watts = power_w(gpu_util, idle_w=self.gpus.idle_w, tdp_w=self.gpus.tdp_w)
        watts[:, self.gpus.failed_rows(eff)] = 0.0
        self.energy += watts.sum(axis=0) * self.tick_s
        tau = self.config.util_smoothing_s
        alpha = 1.0 if tau <= 0 else 1.0 - math.exp(-self.tick_s / tau)
        decay = alpha * (1.0 - alpha) ** np.arange(k_ticks - 1, -1, -1)
        carry = (1.0 - alpha) ** k_ticks
        self.util = carry * self.util + decay @ gpu_util
        self.power = carry * self.power + decay @ watts


def least_work_picks(dep_i: np.ndarray, *, deployment: np.ndarray, sec_prompt: list[float],
                     sec_output: list[float], outstanding: list[float], arrivals: Arrivals,
                     drain_s: float) -> np.ndarray:
    """For each request (deployment ``dep_i[i]``, in time order), the replica ``j`` of its
    deployment whose outstanding work after taking it is least, then that replica's
    outstanding work grows by the request's, ``prompt·sec_prompt[j] + output·sec_output[j]``.
    -1 where the deployment has no replica.

    Outstanding work (``outstanding[j]`` at the first arrival) drains over ``drain_s``
    (exponentially, time constant ``drain_s``: a batched server keeps a request's KV cache
    and batch slot for its whole decode, so work it has started still loads it). Equal
    outstanding work means equal load over the window: a fast replica is not filled up
    to saturation before a slower one gets a request, which would stretch the
    time per output token of everything it serves.

    The order within a group of replicas with the same seconds per prompt and per output
    token (same GPU type, share, co-runners and node) does not change as work drains (all
    drain alike), so each group is one heap keyed by ``ln(work) + (t − t₀)/drain_s``, and
    only each group's top is looked at — O(groups · log n) a request. Of equal costs, the
    lower key within a group goes first, and across groups the lower index.
    """
    n = len(arrivals.times)
    picks = [-1] * n
    if not n:
        return np.array(picks, dtype=np.int64)
    t0 = float(arrivals.times[0])
    tau = max(float(drain_s), 1e-9)

    def key(work: float, t: float) -> float:
        return (math.log(work) if work > 0 else -math.inf) + (t - t0) / tau

    groups: dict[int, list[tuple[float, float, list[tuple[float, int]]]]] = {}
    by_key: dict[tuple[int, float, float], list[tuple[float, int]]] = {}
    for j, d in enumerate(deployment.tolist()):
        k = (int(d), sec_prompt[j], sec_output[j])
        heap = by_key.get(k)
        if heap is None:
            heap = by_key[k] = []
            groups.setdefault(int(d), []).append((sec_prompt[j], sec_output[j], heap))
        heap.append((key(outstanding[j], t0), j))
    for heap in by_key.values():
        heapq.heapify(heap)
    times = arrivals.times.tolist()
    prompt = arrivals.prefill_tokens.tolist()
    output = arrivals.decode_tokens.tolist()
    for i, d in enumerate(dep_i.tolist()):
        cands = groups.get(d)
        if not cands:
            continue
        t, p_tok, o_tok = times[i], prompt[i], output[i]
        best_heap: list[tuple[float, int]] = []
        best, best_cost = -1, math.inf
        for a, b, heap in cands:
            lk, j = heap[0]
            cost = (math.exp(lk - (t - t0) / tau) if lk > -math.inf else 0.0) \
                + p_tok * a + o_tok * b
            if cost < best_cost or (cost == best_cost and j < best):
                best, best_cost, best_heap = j, cost, heap
        heapq.heapreplace(best_heap, (key(best_cost, t), best))
        picks[i] = best
    return np.array(picks, dtype=np.int64)
