"""Secrets: every URL shown or logged is shown without credentials. Metrics servers bind
loopback unless configured; the embedded controller serves its /metrics there too."""

from __future__ import annotations

import logging
import socket
import urllib.request
from pathlib import Path

import pytest

from app import services
from app.bootstrap import build_runtime
from app.controller import build_parser
from core.adapters.prometheus_metrics import PrometheusMetrics
from core.adapters.settings_source import load_settings
from core.errors import TransientError, ValidationError
from core.redact import has_credentials, redact_text, redact_url
from core.runtime_settings import ControllerSettings
from core.settings import Settings
from db.engine import redacted
from tests.app.conftest import open_page

SECRET = "s3cr3t-Pa55"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("url", "shown"), [
    (f"http://user:{SECRET}@prometheus:9090", "http://***@prometheus:9090"),
    (f"https://{SECRET}@prometheus/api", "https://***@prometheus/api"),  # a bare token
    (f"postgresql+psycopg://gsc:{SECRET}@db:5432/gsc", "postgresql+psycopg://***@db:5432/gsc"),
    (f"http://user:p@ss/{SECRET}@host:9090/x", "http://***@host:9090/x"),  # unencoded @ and /
    (f"http://user:a?{SECRET}@host", "http://***@host"),  # unencoded ? in the password
    (f"https://host/api?token={SECRET}&step=15", "https://host/api?token=***&step=15"),
    (f"https://host/?x=1&password={SECRET}", "https://host/?x=1&password=***"),
    ("https://host/api?email=ops@example.com", "https://host/api?email=ops@example.com"),
    ("http://prometheus:9090", "http://prometheus:9090"),
    ("sqlite:///var/gpu-scheduler.db", "sqlite:///var/gpu-scheduler.db"),
])
def test_redact_url_hides_credentials_and_nothing_else(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)
    assert has_credentials(url) is (url != shown)
    assert redacted(url) == shown  # the store's helper is the same one


def test_redact_text_hides_every_url_in_a_message() -> None:
    message = (f"metrics unavailable: Prometheus at http://u:{SECRET}@a:9090 is unreachable; "
               f"store 'postgresql://gsc:{SECRET}@db/gsc' refused")
    out = redact_text(message)
    assert SECRET not in out
    assert "http://***@a:9090" in out and "'postgresql://***@db/gsc'" in out
    assert redact_text("no url here: 3 s") == "no url here: 3 s"


def test_the_prometheus_adapter_never_names_its_credentials(settings: Settings) -> None:
    url = f"http://ops:{SECRET}@127.0.0.1:{_free_port()}"
    with PrometheusMetrics(url, settings=settings, timeout_s=1.0) as metrics:
        assert metrics.url == url  # used for the requests (basic auth)
        assert metrics.display_url == redact_url(url)
        with pytest.raises(TransientError) as caught:
            metrics.telemetry()
    assert SECRET not in str(caught.value) and "http://***@127.0.0.1" in str(caught.value)


def test_the_console_shows_no_credentials_anywhere(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()  # nothing listens: the metrics source is down, with credentials
    monkeypatch.setenv("PROMETHEUS_URL", f"http://ops:{SECRET}@127.0.0.1:{port}")
    caplog.set_level(logging.DEBUG)
    at = open_page()
    rt = services.runtime()
    assert rt.sampler is not None
    rt.sampler.stop()
    rt.monitor.sample_once(persist=False)
    assert rt.monitor.state.error is not None and SECRET not in rt.monitor.state.error
    for page in ("overview", "placement", "autoscaling"):
        at.switch_page(f"../pages/{page}.py")
        at.run()
        assert not at.exception
        texts = [str(getattr(e, "value", "")) for e in
                 (*at.caption, *at.error, *at.warning, *at.info, *at.markdown,
                  *at.sidebar.caption, *at.sidebar.error)]
        assert not [t for t in texts if SECRET in t], page
        assert any(f"Prometheus at http://***@127.0.0.1:{port}" in c.value
                   for c in at.sidebar.caption)
        assert any("Metrics unknown" in e.value and f"http://***@127.0.0.1:{port}" in e.value
                   for e in at.sidebar.error)
    assert SECRET not in caplog.text


def test_metrics_servers_bind_loopback_unless_configured(settings: Settings) -> None:
    assert settings.runtime.controller.metrics_host == "127.0.0.1"
    args = build_parser(settings).parse_args([])
    assert (args.metrics_host, args.metrics_port) == ("127.0.0.1", 9102)
    configured = load_settings(env={"GSC__RUNTIME__CONTROLLER__METRICS_HOST": "0.0.0.0"})
    assert build_parser(configured).parse_args([]).metrics_host == "0.0.0.0"
    assert build_parser(settings).parse_args(["--metrics-host", "::"]).metrics_host == "::"
    for bad in ("", "0.0.0.0:9102", "two words", "999.1.1.1"):
        with pytest.raises(ValidationError, match=r"runtime\.controller\.metrics_host"):
            ControllerSettings(metrics_host=bad)
    with pytest.raises(ValidationError, match=r"runtime\.controller\.embedded_metrics_port"):
        ControllerSettings(embedded_metrics_port=70000)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode("utf-8"))


def test_the_embedded_controller_serves_its_metrics_on_loopback_until_closed(
        tmp_path: Path) -> None:
    port = _free_port()
    settings = load_settings(env={
        "DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}", "GSC_BACKFILL_HOURS": "0",
        "GSC_EMBEDDED_CONTROLLER": "1",
        "GSC__RUNTIME__CONTROLLER__EMBEDDED_METRICS_PORT": str(port)})
    rt = build_runtime(settings)
    try:
        handle = rt.controller_metrics
        assert rt.controller is not None and handle is not None
        assert (handle.host, handle.port) == ("127.0.0.1", port)
        text = _get(f"http://127.0.0.1:{port}/metrics")
        assert "gsc_controller_leader" in text and "gsc_placements_total" in text
        assert f"controller metrics: http://127.0.0.1:{port}/metrics" in rt.notes
        # A second console on this host: the port is taken, noted, not fatal.
        other = build_runtime(load_settings(env={
            "DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}", "GSC_BACKFILL_HOURS": "0",
            "GSC_EMBEDDED_CONTROLLER": "1",
            "GSC__RUNTIME__CONTROLLER__EMBEDDED_METRICS_PORT": str(port)}))
        try:
            assert other.controller is not None and other.controller_metrics is None
            assert any("unavailable" in n for n in other.notes if "controller metrics" in n)
        finally:
            other.close()
    finally:
        rt.close()
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/metrics")


def test_no_embedded_metrics_server_when_its_port_is_zero(tmp_path: Path) -> None:
    rt = build_runtime(load_settings(env={
        "DATABASE_URL": f"sqlite:///{tmp_path / 'off.db'}", "GSC_BACKFILL_HOURS": "0",
        "GSC_EMBEDDED_CONTROLLER": "1", "GSC__RUNTIME__CONTROLLER__EMBEDDED_METRICS_PORT": "0"}))
    try:
        assert rt.controller is not None and rt.controller_metrics is None
    finally:
        rt.close()
