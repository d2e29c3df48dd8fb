"""Process-wide services for the console, created once and cached by Streamlit.

Pages read through these functions and never build domain objects themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from core.adapters.settings_source import load_settings
from core.fleet import default_fleet
from core.model import Node, PlacementRequest
from core.placement import Decision, FleetSnapshot, Scheduler
from core.settings import Settings

FLEET_SOURCE = "embedded default fleet (static snapshot: 4 H100 + 8 A100 nodes, 1 GPU each)"


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner=False)
def fleet_nodes() -> tuple[Node, ...]:
    s = settings()
    return default_fleet(s.catalog, s.classes)


@st.cache_resource(show_spinner=False)
def scheduler() -> Scheduler:
    s = settings()
    return Scheduler(catalog=s.catalog, classes=s.classes, weights=s.placement.weights,
                     weight_version=None, max_utilization=s.placement.max_utilization,
                     max_clients=s.placement.max_mps_clients_per_gpu,
                     memory_headroom=s.placement.memory_headroom)


def parse_request(raw: Mapping[str, Any]) -> PlacementRequest:
    """Validate operator input; raises ``ValidationError`` naming the field."""
    return PlacementRequest.parse(raw, max_gpu_memory_gb=settings().catalog.max_memory_gb)


def what_if(request: PlacementRequest) -> Decision:
    """Decide on a fresh snapshot of the fleet: nothing is reserved or changed."""
    s = settings()
    snapshot = FleetSnapshot(fleet_nodes(), s.catalog,
                             max_clients=s.placement.max_mps_clients_per_gpu)
    return scheduler().decide(request, snapshot)
