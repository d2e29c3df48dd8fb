"""The requests a rollout makes for the replicas it moves (``core.controller.rollout_replicas``)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from core.controller.rollout_replicas import with_id
from core.model import PlacementRequest, Priority
from core.placement.filters import GPU_IN_USE_LABEL, GPU_TYPE_LABEL


def test_a_copy_of_an_autoscaled_replica_drops_the_autoscalers_placement_hints() -> None:
    """An autoscaled replica carries where the autoscaler sized it (GPU type, a GPU in use);
    its rollout copy may go wherever it fits. A CI run's rolling update failed when the
    copy of an A100-sized replica found no A100 with room, with an H100 free."""
    original = PlacementRequest(
        model_name="llm-large-01", model_memory_gb=34.0, priority=Priority.HIGH,
        latency_sla_ms=500.0, namespace="default", request_id="llm-large-01-as-1-0",
        labels=MappingProxyType({"gpu-scheduler.io/source": "autoscaler",
                                 GPU_TYPE_LABEL: "A100", GPU_IN_USE_LABEL: "true"}))
    copy = with_id(original, "ro2-9e6654891682")
    assert copy.request_id == "ro2-9e6654891682"
    assert dict(copy.labels) == {"gpu-scheduler.io/source": "autoscaler"}
    assert replace(copy, labels=original.labels, request_id=original.request_id) == original
