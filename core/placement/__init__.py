"""The placement pipeline, shaped like the Kubernetes scheduling framework."""

from core.placement.framework import Decision, Scheduler
from core.placement.snapshot import FleetSnapshot

__all__ = ["Decision", "FleetSnapshot", "Scheduler"]
