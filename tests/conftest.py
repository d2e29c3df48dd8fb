"""Shared fixtures: settings from the packaged defaults, the default fleet, a scheduler."""

from __future__ import annotations

import os
import shutil

import pytest

from core.adapters.settings_source import load_settings
from core.fleet import default_fleet
from core.placement import FleetSnapshot, Scheduler
from core.scheduling import build_scheduler
from core.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(env={})


@pytest.fixture()
def scheduler(settings: Settings) -> Scheduler:
    return build_scheduler(settings, weight_version=1)


@pytest.fixture()
def default_snapshot(settings: Settings) -> FleetSnapshot:
    return FleetSnapshot(default_fleet(settings.catalog, settings.classes), settings.catalog)


def require_binary(name: str, why: str) -> str:
    """Path of ``name``; skip locally when absent, fail when REQUIRE_INTEGRATION=1."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({why}); apt-get install it or run .ci/run"
        if os.environ.get("REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"REQUIRE_INTEGRATION=1 but {message}")
        pytest.skip(message)
    return path
