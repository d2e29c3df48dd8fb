"""The controller: a loop holding the leader lease that runs placement, monitoring,
autoscaling and feedback as steps over ports (``core.ports``), never the store or a
cluster client directly. ``app.bootstrap`` wires the store and the cluster in."""

from core.controller.loop import LEASE_NAME, ControllerLoop, LostLeadership, Step
from core.controller.placement import (
    PlacementConfig,
    PlacementOutcome,
    PlacementStep,
    PlacementWorker,
)

__all__ = ["LEASE_NAME", "ControllerLoop", "LostLeadership", "PlacementConfig",
           "PlacementOutcome", "PlacementStep", "PlacementWorker", "Step"]
