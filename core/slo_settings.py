"""Latency objectives per deployment and the autoscaling policy that serves them (``[slo]``).

Why: people who run LLM servers state objectives for time-to-first-token and
time-per-output-token, each at a quantile (SPEC §3.6), with an end-to-end
SLA only for servers that are not token streams. The ``slo`` autoscaling
policy (``core.autoscale_slo``) sizes replicas to meet them, the evaluation
measures attainment against them, and the console shows it; all three read
the targets from here.

A request meets its SLO when it meets every target its deployment states
(``LatencySlo.met``). The section also holds the policy choice (``slo``, the
default, or ``seed``: SPEC §3.6's queue rule, literally) for every deployment
and per deployment, and the ``slo`` policy's knobs.

Invariants (checked here, so a bad file is refused at start-up naming the key):
every target is > 0 s or absent and at least one is stated; quantiles lie in
(0, 1); a policy name is one of ``POLICIES``; the knobs are finite and within
their ranges; deployment keys are ``namespace/model`` (a bare model name means
the ``default`` namespace).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from core.errors import ValidationError
from core.validate import number

SECTION = "slo"
POLICY_SLO = "slo"
POLICY_SEED = "seed"
POLICIES = (POLICY_SLO, POLICY_SEED)
_TARGETS = ("ttft_s", "tpot_s", "e2e_s")


@dataclass(frozen=True, slots=True)
class LatencySlo:
    """One deployment's objectives: a target (seconds) and the quantile it applies to."""

    ttft_s: float | None = 2.0
    ttft_quantile: float = 0.99
    tpot_s: float | None = 0.1
    tpot_quantile: float = 0.99
    e2e_s: float | None = None  # servers that are not token streams
    e2e_quantile: float = 0.99

    def __post_init__(self) -> None:
        stated = 0
        for name in _TARGETS:
            value = getattr(self, name)
            if value is None:
                continue
            value = number(f"{SECTION}.{name}", value)
            if value <= 0:
                raise ValidationError(f"{SECTION}.{name}", "must be a number of seconds > 0")
            object.__setattr__(self, name, value)
            stated += 1
        if not stated:
            raise ValidationError(SECTION, "needs at least one of ttft_s, tpot_s, e2e_s")
        for name in ("ttft_quantile", "tpot_quantile", "e2e_quantile"):
            q = number(f"{SECTION}.{name}", getattr(self, name))
            if not 0 < q < 1:
                raise ValidationError(f"{SECTION}.{name}", "must be within (0, 1)")
            object.__setattr__(self, name, q)

    @property
    def quantile(self) -> float:
        """The strictest quantile among the stated targets (the share that must meet all)."""
        qs = [getattr(self, f"{n[:-2]}_quantile") for n in _TARGETS if getattr(self, n)]
        return max(qs)

    def met(self, *, ttft_s: float, tpot_s: float, e2e_s: float) -> bool:
        """Whether one request met every target stated."""
        return ((self.ttft_s is None or ttft_s <= self.ttft_s)
                and (self.tpot_s is None or tpot_s <= self.tpot_s)
                and (self.e2e_s is None or e2e_s <= self.e2e_s))

    def describe(self) -> str:
        parts = []
        for name, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "e2e")):
            value = getattr(self, name)
            if value is not None:
                q = getattr(self, f"{name[:-2]}_quantile")
                parts.append(f"{label} p{q * 100:g} ≤ {value * 1000:g} ms")
        return ", ".join(parts)

    def to_json(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, where: str, base: LatencySlo | None = None
                     ) -> LatencySlo:
        if not isinstance(raw, Mapping):
            raise ValidationError(where, "must be a table of objectives")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {} if base is None else base.to_json()
        for key, value in raw.items():
            if key not in known:
                raise ValidationError(f"{where}.{key}", "unknown objective; expected one of "
                                                        f"{', '.join(sorted(known))}")
            # 0 (or false) switches a target off: TOML has no null.
            off = key in _TARGETS and (value is False or value == 0)
            values[key] = None if off else value
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValidationError(exc.field.replace(SECTION, where, 1), exc.message) from None


def deployment_key(name: str) -> str:
    """``namespace/model``; a bare model name is in the ``default`` namespace."""
    return name if "/" in name else f"default/{name}"


@dataclass(frozen=True)
class SloSettings:
    """The ``[slo]`` table: objectives, the policy choice and the ``slo`` policy's knobs."""

    policy: str = POLICY_SLO  # every deployment's autoscaling policy, unless named below
    objectives: LatencySlo = field(default_factory=LatencySlo)
    # "namespace/model" → objectives (laid over ``objectives``) and → policy.
    deployments: Mapping[str, LatencySlo] = field(default_factory=dict)
    policies: Mapping[str, str] = field(default_factory=dict)
    # A replica is planned to run at most this fraction of its saturated throughput, and
    # below the rate at which the perf model says the objectives still hold.
    max_utilization: float = 0.85
    # How far ahead the forecast looks: at least a replica's start-up.
    horizon_s: float = 120.0
    rate_window_s: float = 60.0  # the recent rate
    trend_window_s: float = 300.0  # its slope
    # Weight of the daily pattern (the rate one day ago, one horizon ahead, scaled by how
    # today compares) against the recent rate and trend; 0 ignores history.
    daily_weight: float = 0.5
    # Burst headroom: the observed peak-to-mean ratio inside a minute is capped here.
    max_burst_factor: float = 2.5
    # Stabilization: a scale-up acts on the lowest need of the last up_window_s, a
    # scale-in on the highest of the last down_window_s (and only once that much history
    # exists). 0 s up is the Kubernetes HPA's own default: bursts of LLM traffic last
    # seconds to a minute, and a policy sized to latency objectives must not sit them out.
    up_window_s: float = 0.0
    down_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValidationError(f"{SECTION}.policy", f"must be one of {', '.join(POLICIES)}")
        for key, name in self.policies.items():
            if name not in POLICIES:
                raise ValidationError(f"{SECTION}.policies.{key}",
                                      f"must be one of {', '.join(POLICIES)}")
        object.__setattr__(self, "deployments", MappingProxyType(
            {deployment_key(k): v for k, v in self.deployments.items()}))
        object.__setattr__(self, "policies", MappingProxyType(
            {deployment_key(k): v for k, v in self.policies.items()}))

        def within(key: str, lo: float, hi: float) -> None:
            value = number(f"{SECTION}.{key}", getattr(self, key))
            if not lo <= value <= hi:
                raise ValidationError(f"{SECTION}.{key}", f"must be within {lo:g}..{hi:g}")
            object.__setattr__(self, key, value)

        within("max_utilization", 0.05, 1.0)
        within("horizon_s", 0, 3600)
        within("rate_window_s", 1, 3600)
        within("trend_window_s", 1, 86_400)
        within("daily_weight", 0, 1)
        within("max_burst_factor", 1, 100)
        within("up_window_s", 0, 3600)
        within("down_window_s", 0, 86_400)

    def objectives_for(self, deployment: str) -> LatencySlo:
        return self.deployments.get(deployment_key(deployment), self.objectives)

    def policy_for(self, deployment: str) -> str:
        return self.policies.get(deployment_key(deployment), self.policy)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SloSettings:
        """From the ``[slo]`` table; unknown keys are refused, naming the key.

        Objectives sit at the top of the table (``ttft_s = 2.0``) and per deployment
        in ``[slo.deployments."namespace/model"]``, which may also name its ``policy``.
        """
        if not isinstance(raw, Mapping):
            raise ValidationError(SECTION, "must be a table of settings")
        targets = {f.name for f in fields(LatencySlo)}
        knobs = {f.name for f in fields(cls)} - {"objectives", "deployments", "policies"}
        top: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "deployments":
                continue
            if key in targets:
                top[key] = value
            elif key in knobs:
                values[key] = value
            else:
                raise ValidationError(f"{SECTION}.{key}", "unknown setting; expected one of "
                                      f"{', '.join(sorted(targets | knobs | {'deployments'}))}")
        objectives = LatencySlo.from_mapping(top, where=SECTION) if top else LatencySlo()
        per: dict[str, LatencySlo] = {}
        policies: dict[str, str] = {}
        table = raw.get("deployments", {})
        if not isinstance(table, Mapping):
            raise ValidationError(f"{SECTION}.deployments", "must be a table of deployments")
        for name, entry in table.items():
            where = f"{SECTION}.deployments.{name}"
            if not isinstance(entry, Mapping):
                raise ValidationError(where, "must be a table of objectives")
            entry = dict(entry)
            if "policy" in entry:
                policies[str(name)] = str(entry.pop("policy"))
            if entry:
                per[str(name)] = LatencySlo.from_mapping(entry, where=where, base=objectives)
        if "policy" in values:
            values["policy"] = str(values["policy"])
        return cls(objectives=objectives, deployments=per, policies=policies, **values)
