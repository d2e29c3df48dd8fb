"""The shipped Prometheus rules pass Prometheus' own checker and their unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_binary

pytestmark = pytest.mark.integration

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool", "Debian package prometheus")
    return subprocess.run([promtool, *args], cwd=RULES_DIR, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_accepts_the_example_scrape_config() -> None:
    result = _promtool("check", "config", "scrape-example.yml")
    assert result.returncode == 0, result.stdout + result.stderr
