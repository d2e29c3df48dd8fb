"""The console pointed at a (fake) Kubernetes API server shows its nodes on the Fleet page."""

from __future__ import annotations

from tests.app.conftest import open_page
from tests.integration.fake_kube import FakeKube


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
