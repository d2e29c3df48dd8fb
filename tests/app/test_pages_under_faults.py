"""Every page under each dependency fault: no exception box, and an ``st.error`` that says
what is wrong and what to do.

The faults, as an operator meets them: the cluster API down (Kubernetes mode against the
fake API server, stopped while the console runs), the metrics source down (a Prometheus
URL, with credentials, where nothing listens), the store down while the console runs (its
SQLite file and directory deleted) and the store down at start-up (a PostgreSQL URL, with
a password, where nothing listens). A page that does not call the dependency says so
through the sidebar's health panel, which every page shows.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from streamlit.testing.v1 import AppTest

from app import faults, services
from core.auth import LOCAL_APPROVER
from core.errors import TransientError, ValidationError
from core.model import PlacementRequest, Priority
from db import queue
from tests.app.conftest import open_page
from tests.integration.fake_kube import FakeKube

PAGES = ("overview", "fleet", "placement", "mps", "rollouts", "costs", "weights", "autoscaling",
         "audit")
SECRET = "hunter2-Secret"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _visit(at: AppTest, page: str) -> list[str]:
    """Run ``page``; no exception box; every error shown (page and sidebar)."""
    at.switch_page(f"../pages/{page}.py")
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
    errors = [e.value for e in at.error] + [e.value for e in at.sidebar.error]
    texts = errors + [str(getattr(e, "value", "")) for e in
                      (*at.warning, *at.info, *at.caption, *at.sidebar.caption)]
    assert not [t for t in texts if SECRET in t], page
    return list(dict.fromkeys(errors))


def _says(errors: list[str], *, what: str, todo: str) -> bool:
    return any(what in e and todo in e for e in errors)


def _request(name: str = "fault-model") -> PlacementRequest:
    return PlacementRequest(model_name=name, model_memory_gb=8.0, priority=Priority.MEDIUM,
                            latency_sla_ms=200.0)


@pytest.fixture()
def probe_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The health panel probes a dependency no call reached in ``HEALTH_TTL_S``; here no
    outcome is reused, as if that long had passed between page loads."""
    monkeypatch.setattr(services, "HEALTH_TTL_S", 0.0)


@pytest.mark.usefixtures("probe_every_run")
def test_every_page_says_the_cluster_api_is_down(fake_cluster: FakeKube) -> None:
    at = open_page("fleet")
    assert len(next(d.value for d in at.dataframe if "threads used %" in d.value.columns)) == 12
    (queued,) = services.submit(LOCAL_APPROVER, [_request()], source="test",
                                reason="before the outage")
    fake_cluster.stop()  # the API server goes away while the console runs

    for page in PAGES:
        errors = _visit(at, page)
        assert _says(errors, what="Cluster API down", todo="Kubernetes API server is up"), \
            (page, errors)
    errors = _visit(at, "fleet")
    assert _says(errors, what="Could not read the fleet's nodes", todo="reload the page")

    # The preview needs the nodes: it says so.
    at.switch_page("../pages/placement.py")
    at.run()
    at.button(key="FormSubmitter:placement.form-Preview placement").click()
    at.run()
    assert not at.exception
    assert _says([e.value for e in at.error], what="Could not preview the placement",
                 todo="Kubernetes API server")
    # "Place queued requests now" claims nothing while the cluster does not answer: the
    # request stays queued, unclaimed, its attempts untouched.
    at.button(key="placement.place_now").click()
    at.run()
    assert not at.exception
    assert _says([e.value for e in at.error], what="Could not run a placement pass",
                 todo="every request stays queued")
    with services.runtime().factory() as s:
        (row,) = [q for q in queue.list_requests(s, limit=10) if q.request_id == queued]
    assert (row.status, row.attempts) == ("queued", 0)


@pytest.mark.usefixtures("probe_every_run")
def test_every_page_says_the_metrics_source_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setenv("PROMETHEUS_URL", f"http://ops:{SECRET}@127.0.0.1:{port}")
    at = open_page()
    rt = services.runtime()
    assert rt.sampler is not None
    rt.sampler.stop()  # this test takes the sample
    rt.monitor.sample_once(persist=False)
    for page in PAGES:
        errors = _visit(at, page)
        assert _says(errors, what="Metrics unknown", todo="Check that Prometheus"), \
            (page, errors)
        assert _says(errors, what=f"http://***@127.0.0.1:{port}", todo="unreachable")
    errors = _visit(at, "overview")
    assert _says(errors, what="QPS unknown", todo="Update gates are closed")
    assert not any("safe to update" in s.value for s in at.success)
    errors = _visit(at, "autoscaling")
    assert _says([e.value for e in at.error], what="Metrics unknown",
                 todo="Autoscaling takes no action")


@pytest.mark.usefixtures("probe_every_run")
def test_every_page_says_the_store_is_down(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{store / 'console.db'}")
    monkeypatch.setenv("GSC_BACKFILL_HOURS", "0")
    at = open_page()
    rt = services.runtime()
    assert rt.sampler is not None
    rt.sampler.stop()  # its next sample would only fail to store
    shutil.rmtree(store)  # the database file, its journal and its directory are gone
    rt.engine.dispose()  # and no pooled connection still holds them

    for page in PAGES:
        errors = _visit(at, page)
        assert _says(errors, what="Store down", todo="Check that the database"), \
            (page, errors)
    in_page = {
        "overview": "Could not read the fleet's history",
        "placement": "Could not read the placement queue",
        "costs": "Could not read the cost ledger",
        "weights": "Could not read the weight versions",
        "autoscaling": "Could not read the autoscaler's status",
    }
    for page, what in in_page.items():
        _visit(at, page)
        assert _says([e.value for e in at.error], what=what, todo="DATABASE_URL"), page
    # Submitting says it was not saved.
    _visit(at, "placement")
    at.button(key="FormSubmitter:placement.form-Submit to queue").click()
    at.run()
    assert not at.exception
    assert _says([e.value for e in at.error], what="Could not queue the request",
                 todo="(nothing was saved)")


def test_every_page_says_the_store_is_down_at_start_up(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    port = _free_port()  # no PostgreSQL listens there
    monkeypatch.setenv("DATABASE_URL",
                       f"postgresql+psycopg://gsc:{SECRET}@127.0.0.1:{port}/gsc")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app" /
                               "streamlit_app.py"), default_timeout=60)
    at.run()
    for page in PAGES:
        errors = _visit(at, page)
        assert _says(errors, what="The console cannot start",
                     todo=f"postgresql+psycopg://***@127.0.0.1:{port}/gsc"), (page, errors)
        assert _says(errors, what="did not answer", todo="Check that the database")


def test_the_health_book_reuses_an_outcome_for_its_ttl_then_asks_again() -> None:
    now = [100.0]
    book = faults.HealthBook(clock=lambda: now[0])
    calls: list[str] = []

    def down() -> None:
        calls.append("down")
        with faults.cluster_errors(source="Kubernetes cluster", book=book):
            raise TransientError("list nodes: Connection refused")

    problem = book.probe(faults.CLUSTER, down, ttl_s=10.0)
    assert problem is not None and "did not answer: list nodes: Connection refused" in problem
    now[0] += 9.0
    assert book.probe(faults.CLUSTER, down, ttl_s=10.0) == problem and calls == ["down"]
    now[0] += 2.0
    assert book.probe(faults.CLUSTER, lambda: None, ttl_s=10.0) is None  # it answers again
    # A call that reaches the dependency notes its outcome: the next probe reuses it.
    with pytest.raises(faults.StoreUnavailable, match="did not answer: disk I/O error"), \
            faults.store_errors(store_url="sqlite:///x.db", book=book):
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError("disk I/O error"))
    assert "disk I/O error" in (book.probe(faults.STORE, lambda: None, ttl_s=10.0) or "")
    # Bad input is not an outage: it passes through unchanged and is not noted.
    with pytest.raises(ValidationError), faults.cluster_errors(source="twin", book=book):
        raise ValidationError("node", "'x' is not a node of this cluster")
    assert book.probe(faults.CLUSTER, lambda: None, ttl_s=10.0) is None
