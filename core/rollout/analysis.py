"""Canary analysis: the changed nodes' health against the rest, over a window (SPEC §4.1).

Why: a canary is only worth something if its verdict is mechanical. The
controller samples each node's error rate and p99 latency (``HealthSource``)
while the window runs; ``judge`` turns the samples into passed, failed
(error rate > 5 % or p99 > 2000 ms, thresholds as parameters) or
inconclusive (no traffic reached the canary: unknown is not "healthy", so the
plan pauses for a person).

``node_health`` attributes per-deployment telemetry to nodes by where each
deployment's serving replicas run (a node's error rate is the QPS-weighted
error rate of the replicas it serves), which is what a Prometheus without
per-node success counters gives too; it is shared by the twin's and the real
health sources.

Invariants: pure (no clocks, no I/O); a sample with no requests carries no
error rate or latency (``None``), never 0; the verdict only uses samples taken
inside the window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.errors import ValidationError
from core.telemetry import FleetTelemetry


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    RUNNING = "running"  # the window has not ended and nothing failed yet


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_error_rate: float = 0.05
    max_p99_ms: float = 2000.0
    min_samples: int = 3  # samples with traffic needed before any verdict but "inconclusive"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValidationError("analysis.max_error_rate", "must be within [0, 1]")
        if self.max_p99_ms <= 0:
            raise ValidationError("analysis.max_p99_ms", "must be > 0")
        if self.min_samples < 1:
            raise ValidationError("analysis.min_samples", "must be ≥ 1")


@dataclass(frozen=True, slots=True)
class Health:
    """One group of nodes at one instant: requests per second seen, error rate, p99."""

    qps: float
    error_rate: float | None
    p99_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return {"qps": self.qps, "error_rate": self.error_rate, "p99_ms": self.p99_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        err, p99 = data.get("error_rate"), data.get("p99_ms")
        return cls(qps=float(data.get("qps", 0.0)),
                   error_rate=None if err is None else float(err),
                   p99_ms=None if p99 is None else float(p99))


NO_TRAFFIC = Health(qps=0.0, error_rate=None, p99_ms=None)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    canary: Health
    baseline: Health

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "canary": self.canary.to_json(),
                "baseline": self.baseline.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sample:
        return cls(at=float(data["at"]), canary=Health.from_json(data["canary"]),
                   baseline=Health.from_json(data["baseline"]))


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str
    canary: Health
    baseline: Health
    samples: int

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "reason": self.reason,
                "canary": self.canary.to_json(), "baseline": self.baseline.to_json(),
                "samples": self.samples}


def combine(parts: Iterable[Health]) -> Health:
    """QPS-weighted error rate and p99 of several nodes (or samples); no traffic → unknown."""
    parts = [p for p in parts if p.qps > 0 and p.error_rate is not None]
    qps = sum(p.qps for p in parts)
    if qps <= 0:
        return NO_TRAFFIC
    err = sum(p.qps * (p.error_rate or 0.0) for p in parts) / qps
    lat = [(p.qps, p.p99_ms) for p in parts if p.p99_ms is not None]
    lat_qps = sum(q for q, _ in lat)
    p99 = sum(q * v for q, v in lat if v is not None) / lat_qps if lat_qps > 0 else None
    return Health(qps=qps, error_rate=err, p99_ms=p99)


def node_health(telemetry: FleetTelemetry, nodes: Iterable[str]) -> dict[str, Health]:
    """Each of ``nodes``' health, attributed from its serving replicas' deployments."""
    wanted = set(nodes)
    parts: dict[str, list[Health]] = {n: [] for n in wanted}
    for d in telemetry.deployments:
        if not d.pods or d.replicas <= 0:
            continue
        per_node: dict[str, int] = {}
        for pod in d.pods:
            node = _pod_node(telemetry, pod)
            if node in wanted:
                per_node[node] = per_node.get(node, 0) + 1
        for node, count in per_node.items():
            share = d.qps_5m * count / max(len(d.pods), 1)
            err = None if d.success_rate is None else 1.0 - d.success_rate
            parts[node].append(Health(qps=share, error_rate=err, p99_ms=d.p99_latency_ms))
    return {n: combine(parts[n]) for n in wanted}


def _pod_node(telemetry: FleetTelemetry, pod: str) -> str | None:
    for g in telemetry.gpus:
        if pod in g.pods:
            return g.node
    return None


def sample(*, at: float, health: Mapping[str, Health], canary: Sequence[str]) -> Sample:
    """The canary nodes' and the other nodes' combined health at ``at``."""
    chosen = set(canary)
    return Sample(at=at, canary=combine(h for n, h in health.items() if n in chosen),
                  baseline=combine(h for n, h in health.items() if n not in chosen))


def judge(samples: Sequence[Sample], *, started_at: float, window_s: float, now: float,
          thresholds: Thresholds) -> Judgement:
    """The verdict over the samples taken in ``[started_at, started_at + window_s]``.

    Fails as soon as ``min_samples`` samples with traffic exceed a threshold (no need
    to keep a failing canary for the whole hour); passes or is inconclusive only once
    the window has ended.
    """
    inside = [s for s in samples if started_at <= s.at <= started_at + window_s]
    seen = [s for s in inside if s.canary.qps > 0 and s.canary.error_rate is not None]
    canary = combine(s.canary for s in seen)
    baseline = combine(s.baseline for s in inside)
    ended = now >= started_at + window_s

    def result(verdict: Verdict, reason: str) -> Judgement:
        return Judgement(verdict=verdict, reason=reason, canary=canary, baseline=baseline,
                         samples=len(seen))

    if len(seen) >= thresholds.min_samples:
        err, p99 = canary.error_rate or 0.0, canary.p99_ms
        if err > thresholds.max_error_rate:
            return result(Verdict.FAILED, f"canary error rate {err:.1%} > "
                                          f"{thresholds.max_error_rate:.1%}")
        if p99 is not None and p99 > thresholds.max_p99_ms:
            return result(Verdict.FAILED, f"canary p99 {p99:.0f} ms > "
                                          f"{thresholds.max_p99_ms:.0f} ms")
        if ended:
            return result(Verdict.PASSED, f"canary error rate {err:.1%}, p99 "
                                          f"{'unknown' if p99 is None else f'{p99:.0f} ms'} "
                                          f"over {len(seen)} samples")
    if not ended:
        return result(Verdict.RUNNING, f"{len(seen)} sample(s) with traffic so far")
    return result(Verdict.INCONCLUSIVE,
                  f"unknown: only {len(seen)} sample(s) with traffic on the canary nodes "
                  f"(need {thresholds.min_samples}); a person decides")
