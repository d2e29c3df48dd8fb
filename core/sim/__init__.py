"""The digital twin of the GPU fleet: performance model, traffic, trace replay, faults.

``Twin`` implements the ``Cluster``, ``NodeConfigurator`` and ``Metrics`` ports on
an injected clock; it is the embedded default fleet, the fake for tests and the
evaluation bench. Its parts: ``tables`` (static GPU rows), ``node_config`` (cordon
and device plugins), ``pods`` (binding and scheduling), ``engine`` and ``books``
(the traffic engine and its counters), ``telemetry`` (readings), ``fleet`` (the
fleets it starts from).
"""

from core.sim.faults import Fault, FaultKind
from core.sim.perf_model import PerfModel, PerfParams
from core.sim.trace import Trace, TraceReplay, parse_trace, read_trace
from core.sim.traffic import Arrivals, ArrivalSource, DiurnalTraffic, TokenDistribution
from core.sim.twin import Twin, TwinConfig, fleet_from_settings, generate_fleet

__all__ = [
    "ArrivalSource", "Arrivals", "DiurnalTraffic", "Fault", "FaultKind", "PerfModel",
    "PerfParams", "TokenDistribution", "Trace", "TraceReplay", "Twin", "TwinConfig",
    "fleet_from_settings", "generate_fleet", "parse_trace", "read_trace",
]
