"""The console pointed at a (fake) Kubernetes API server shows its nodes on the Fleet page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.app.conftest import open_page
from tests.integration.fake_kube import FakeKube, demo_fleet, kubeconfig


@pytest.fixture()
def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube(pod_start_delay_s=0.2, plugin_restart_delay_s=0.2,
                    termination_delay_s=0.1)
    url = fake.start(0)
    try:
        demo_fleet(fake)
        config = tmp_path / "kubeconfig"
        config.write_text(yaml.safe_dump(kubeconfig(url)), encoding="utf-8")
        monkeypatch.setenv("GSC_CLUSTER", "kubernetes")
        monkeypatch.setenv("KUBECONFIG", str(config))
        yield fake
    finally:
        fake.stop()


def test_fleet_page_lists_the_clusters_nodes(fake_cluster: FakeKube) -> None:
    at = open_page("fleet")
    table = next(d.value for d in at.dataframe if "threads used %" in d.value.columns)
    assert len(table) == 12
    assert set(table["type"]) == {"H100", "A100"}
    assert any("Kubernetes cluster" in c.value for c in at.sidebar.caption)
    # No Prometheus configured: the Overview says so instead of crashing.
    at.switch_page("../pages/overview.py")
    at.run()
    assert not at.exception
    assert any("PROMETHEUS_URL" in e.value for e in at.error)
