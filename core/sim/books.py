"""The twin's books: the deployments it serves, their traffic shares and their counters.

Why: the traffic engine writes what every request did (counts, tokens,
latency histograms) and telemetry reads it back over windows; both index the
same per-deployment columns, which grow when a model first appears. Keeping
them in one place keeps the columns aligned.

Invariants: every column has one entry per deployment in ``keys`` order and a
deployment is never removed (its index stays valid); cumulative counters never
decrease; the per-deployment ring buffers hold the last hour of ticks (one row per
tick, ``ticks % len(ring)``), the per-GPU ring the last ``GPU_WINDOW_S`` (it is only
read over that window; an hour of 5,000 GPUs would be 144 MB), and the histogram
slots the last few minutes, a slot
being zeroed exactly once, when the simulation first enters it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from core.errors import ValidationError
from core.telemetry import E2E_LATENCY_BUCKETS_S, ITL_BUCKETS_S, TTFT_BUCKETS_S

E2E = np.array(E2E_LATENCY_BUCKETS_S)
TTFT = np.array(TTFT_BUCKETS_S)
ITL = np.array(ITL_BUCKETS_S)
GPU_WINDOW_S = 60.0  # the per-GPU request counts are read over the last minute only


class Books:
    """Per-deployment traffic shares, cumulative counters, per-tick rings and histograms."""

    def __init__(self, *, gpu_count: int, tick_s: float, ring_len: int, hist_len: int,
                 ticks_per_hslot: int, explicit_weights: Mapping[str, float],
                 slo_targets: Mapping[str, tuple[float | None, float | None, float | None]]
                 | None = None) -> None:
        self.gpu_count = gpu_count
        self.tick_s = tick_s
        self.ring_len = ring_len
        self.hist_len = hist_len
        self.ticks_per_hslot = ticks_per_hslot
        self.hist_zeroed = -1
        self.keys: list[tuple[str, str]] = []  # (namespace, model)
        self.index: dict[tuple[str, str], int] = {}
        self.weight = np.empty(0)
        self.explicit: list[bool] = []
        self.explicit_weights: dict[str, float] = dict(explicit_weights)
        self.c_requests = np.empty(0, dtype=np.int64)
        self.c_success = np.empty(0, dtype=np.int64)
        self.c_prompt = np.empty(0, dtype=np.int64)
        self.c_gen = np.empty(0, dtype=np.int64)
        self.c_e2e = np.empty((0, E2E.size + 1), dtype=np.int64)
        self.c_e2e_sum = np.empty(0)
        self.c_ttft = np.empty((0, TTFT.size + 1), dtype=np.int64)
        self.c_ttft_sum = np.empty(0)
        # Inter-token latency: one observation per token after the first (vLLM's way).
        self.c_itl = np.empty((0, ITL.size + 1), dtype=np.int64)
        self.c_itl_sum = np.empty(0)
        # Requests that met every latency objective of their model (when it has some).
        self.slo_targets = dict(slo_targets or {})
        self.slo = np.empty((0, 3))
        self.c_slo_ok = np.empty(0, dtype=np.int64)
        self.r_req = np.zeros((ring_len, 0), dtype=np.int64)
        self.r_ok = np.zeros((ring_len, 0), dtype=np.int64)
        self.r_gen = np.zeros((ring_len, 0), dtype=np.int64)
        self.r_gpu = np.zeros((min(ring_len, math.ceil(GPU_WINDOW_S / tick_s) + 1),
                               gpu_count), dtype=np.int64)
        self.h_e2e = np.zeros((hist_len, 0, E2E.size + 1), dtype=np.int64)
        self.h_e2e_sum = np.zeros((hist_len, 0))
        self.h_ttft = np.zeros((hist_len, 0, TTFT.size + 1), dtype=np.int64)

    # --- deployments and traffic shares -------------------------------------------------
    def deployment(self, namespace: str, model: str) -> int:
        """The index of the deployment, adding it (with its traffic share) when new."""
        key = (namespace, model)
        index = self.index.get(key)
        if index is not None:
            return index
        index = len(self.keys)
        self.keys.append(key)
        self.index[key] = index
        explicit = self.explicit_weights
        positive = self.weight[self.weight > 0]
        weight = explicit.get(model, float(np.median(positive)) if positive.size else 1.0)
        self.weight = np.append(self.weight, weight)
        self.explicit.append(model in explicit)
        grow1 = np.zeros(1, dtype=np.int64)
        self.c_requests = np.append(self.c_requests, grow1)
        self.c_success = np.append(self.c_success, grow1)
        self.c_prompt = np.append(self.c_prompt, grow1)
        self.c_gen = np.append(self.c_gen, grow1)
        self.c_e2e = np.vstack([self.c_e2e, np.zeros((1, E2E.size + 1), dtype=np.int64)])
        self.c_e2e_sum = np.append(self.c_e2e_sum, 0.0)
        self.c_ttft = np.vstack([self.c_ttft, np.zeros((1, TTFT.size + 1), dtype=np.int64)])
        self.c_ttft_sum = np.append(self.c_ttft_sum, 0.0)
        self.c_itl = np.vstack([self.c_itl, np.zeros((1, ITL.size + 1), dtype=np.int64)])
        self.c_itl_sum = np.append(self.c_itl_sum, 0.0)
        targets = self.slo_targets.get(model, (None, None, None))
        self.slo = np.vstack([self.slo, [[np.inf if v is None else float(v)
                                          for v in targets]]])
        self.c_slo_ok = np.append(self.c_slo_ok, grow1)
        column = np.zeros((self.ring_len, 1), dtype=np.int64)
        self.r_req = np.hstack([self.r_req, column])
        self.r_ok = np.hstack([self.r_ok, column])
        self.r_gen = np.hstack([self.r_gen, column])
        self.h_e2e = np.concatenate(
            [self.h_e2e, np.zeros((self.hist_len, 1, E2E.size + 1), dtype=np.int64)], axis=1)
        self.h_e2e_sum = np.hstack([self.h_e2e_sum, np.zeros((self.hist_len, 1))])
        self.h_ttft = np.concatenate(
            [self.h_ttft, np.zeros((self.hist_len, 1, TTFT.size + 1), dtype=np.int64)], axis=1)
        return index

    def set_implicit_weights(self, capacity: np.ndarray) -> None:
        """Deployments without an explicit weight get ``capacity`` as theirs."""
        for i, explicit in enumerate(self.explicit):
            if not explicit:
                self.weight[i] = capacity[i]

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Set the relative traffic of the named models (in every namespace, and for
        deployments of them that appear later); other models keep theirs."""
        for model, weight in weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise ValidationError(f"traffic_weights.{model}", "must be a number ≥ 0")
            self.explicit_weights[model] = float(weight)
            for i, (_, m) in enumerate(self.keys):
                if m == model:
                    self.weight[i] = weight
                    self.explicit[i] = True

    def shares(self) -> dict[tuple[str, str], float]:
        """Each deployment's share of the traffic (shares sum to 1)."""
        total = float(self.weight.sum()) or 1.0
        return {k: float(w) / total for k, w in zip(self.keys, self.weight, strict=True)}

    # --- booking a chunk ----------------------------------------------------------------
    def ring_rows(self, ticks: int, k_ticks: int) -> np.ndarray:
        return (ticks + np.arange(k_ticks)) % self.ring_len

    def hist_slots(self, ticks: int, k_ticks: int) -> tuple[int, int]:
        """Zero the histogram slots this chunk enters; returns (first, count)."""
        first = ticks // self.ticks_per_hslot
        last = (ticks + k_ticks - 1) // self.ticks_per_hslot
        for h in range(max(first, self.hist_zeroed + 1), last + 1):
            slot = h % self.hist_len
            self.h_e2e[slot] = 0
            self.h_e2e_sum[slot] = 0.0
            self.h_ttft[slot] = 0
        self.hist_zeroed = max(self.hist_zeroed, last)
        return first, last - first + 1

    def account(self, *, ticks: int, k_ticks: int, k_i: np.ndarray, dep_i: np.ndarray,
                ok: np.ndarray, served: np.ndarray, gpu_i: np.ndarray, prompt: np.ndarray,
                output: np.ndarray, latency: np.ndarray, ttft: np.ndarray,
                tpot: np.ndarray | None = None) -> None:
        """Book every request of the chunk that starts at tick ``ticks``."""
        n_dep = len(self.keys)
        self.c_requests += np.bincount(dep_i, minlength=n_dep)
        self.c_success += np.bincount(dep_i[ok], minlength=n_dep)
        self.c_prompt += np.bincount(dep_i[served], weights=prompt[served],
                                     minlength=n_dep).astype(np.int64)
        self.c_gen += np.bincount(dep_i[ok], weights=output[ok],
                                  minlength=n_dep).astype(np.int64)
        rows = self.ring_rows(ticks, k_ticks)
        cell = k_i * n_dep + dep_i
        size = k_ticks * n_dep
        self.r_req[rows] = np.bincount(cell, minlength=size).reshape(k_ticks, n_dep)
        self.r_ok[rows] = np.bincount(cell[ok], minlength=size).reshape(k_ticks, n_dep)
        self.r_gen[rows] = np.bincount(cell[ok], weights=output[ok],
                                       minlength=size).reshape(k_ticks, n_dep).astype(np.int64)
        on_gpu = gpu_i >= 0
        per_gpu = np.bincount(k_i[on_gpu] * self.gpu_count + gpu_i[on_gpu],
                              minlength=k_ticks * self.gpu_count
                              ).reshape(k_ticks, self.gpu_count)
        keep = min(k_ticks, self.r_gpu.shape[0])  # a chunk longer than the ring: its end
        self.r_gpu[(ticks + k_ticks - keep + np.arange(keep)) % self.r_gpu.shape[0]] = \
            per_gpu[k_ticks - keep:]

        first, n_slots = self.hist_slots(ticks, k_ticks)
        d_ok, lat, first_tok = dep_i[ok], latency[ok], ttft[ok]
        h_local = (ticks + k_i[ok]) // self.ticks_per_hslot - first
        slots = (first + np.arange(n_slots)) % self.hist_len
        nb = E2E.size + 1
        b = np.searchsorted(E2E, lat, side="left")
        self.c_e2e += np.bincount(d_ok * nb + b, minlength=n_dep * nb).reshape(n_dep, nb)
        self.c_e2e_sum += np.bincount(d_ok, weights=lat, minlength=n_dep)
        self.h_e2e[slots] += np.bincount((h_local * n_dep + d_ok) * nb + b,
                                         minlength=n_slots * n_dep * nb
                                         ).reshape(n_slots, n_dep, nb)
        self.h_e2e_sum[slots] += np.bincount(h_local * n_dep + d_ok, weights=lat,
                                             minlength=n_slots * n_dep).reshape(n_slots, n_dep)
        nt = TTFT.size + 1
        bt = np.searchsorted(TTFT, first_tok, side="left")
        self.c_ttft += np.bincount(d_ok * nt + bt, minlength=n_dep * nt).reshape(n_dep, nt)
        self.c_ttft_sum += np.bincount(d_ok, weights=first_tok, minlength=n_dep)
        self.h_ttft[slots] += np.bincount((h_local * n_dep + d_ok) * nt + bt,
                                          minlength=n_slots * n_dep * nt
                                          ).reshape(n_slots, n_dep, nt)
        gap = np.zeros(lat.size) if tpot is None else tpot[ok]
        gaps = np.maximum(output[ok] - 1, 0).astype(np.float64)
        ni = ITL.size + 1
        bi = np.searchsorted(ITL, gap, side="left")
        self.c_itl += np.bincount(d_ok * ni + bi, weights=gaps,
                                  minlength=n_dep * ni).reshape(n_dep, ni).astype(np.int64)
        self.c_itl_sum += np.bincount(d_ok, weights=gap * gaps, minlength=n_dep)
        goal = self.slo[d_ok]
        met = (first_tok <= goal[:, 0]) & (gap <= goal[:, 1]) & (lat <= goal[:, 2])
        self.c_slo_ok += np.bincount(d_ok[met], minlength=n_dep)

    # --- reading windows back -----------------------------------------------------------
    def window_sum(self, ring: np.ndarray, seconds: float, *, ticks: int
                   ) -> tuple[np.ndarray, float]:
        """Sum of the last ``seconds`` of completed ticks, and the seconds covered."""
        size = ring.shape[0]
        n = min(round(seconds / self.tick_s), ticks, size - 1)
        if n <= 0:
            return np.zeros(ring.shape[1:], dtype=ring.dtype), 0.0
        rows = (ticks - 1 - np.arange(n)) % size
        return ring[rows].sum(axis=0), n * self.tick_s
