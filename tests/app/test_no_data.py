"""Unknown is not zero: no data, a stale sample or missing series read as unknown, with the
reason, and the QPS gate fails closed on it; the Overview says so instead of "0 QPS — safe"."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from app import services
from core.clock import ManualClock
from core.controller.monitor import Monitor
from core.monitor import UNKNOWN_BAND, live_reading, missing_series, qps_gate
from core.settings import Settings
from core.sim.twin import Twin
from core.telemetry import FleetTelemetry, FleetTotals, NoDataError
from tests.app.conftest import open_page

MAX_AGE_S = 90.0


class NoData:
    """A metrics source that answers without current data, the way the Prometheus adapter
    does when it scrapes nothing."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def available(self) -> bool:
        return True

    def telemetry(self) -> FleetTelemetry:
        raise NoDataError(self.reason)


class NullSink:
    def record_sample(self, **_: object) -> None:
        raise AssertionError("nothing is stored without data")


@pytest.fixture()
def twin(settings: Settings) -> Twin:
    twin = Twin(settings, clock=ManualClock(time.time()))
    twin.step(600)  # traffic flowing
    assert twin.telemetry().totals.qps > 0
    return twin


def _quiet(t: FleetTelemetry) -> FleetTelemetry:
    """The reading an empty Prometheus used to give: no series at all, 0 QPS."""
    return replace(t, gpus=(), deployments=(), totals=FleetTotals(qps=0.0, power_w=0.0,
                                                                  tops_per_w=0.0))


def test_a_current_reading_is_known_and_the_gate_follows_its_band(twin: Twin) -> None:
    t = twin.telemetry()
    reading = live_reading(latest=t, error=None, last_sample_at=t.timestamp,
                           now=t.timestamp + 5, max_age_s=MAX_AGE_S, layout=twin.nodes())
    assert reading.known and reading.current() is t and reading.age_s == pytest.approx(5)
    gate = qps_gate(reading, safe=1e9, caution=2e9, high_risk=3e9)
    assert (gate.passed, gate.band) == (True, "safe")
    over = qps_gate(reading, safe=0.0, caution=0.0, high_risk=0.0)
    assert (over.passed, over.band) == (False, "do-not-update")


@pytest.mark.parametrize("case", ["no data", "source down", "stale", "no gpu series",
                                  "no vllm series", "no sample yet"])
def test_unknown_readings_never_pass_the_gate_nor_read_as_zero(twin: Twin, case: str) -> None:
    t = twin.telemetry()
    at = t.timestamp
    kwargs: dict[str, object] = {"latest": t, "error": None, "last_sample_at": at,
                                 "now": at + 1, "max_age_s": MAX_AGE_S,
                                 "layout": twin.nodes()}
    if case == "no data":
        kwargs["error"] = str(NoDataError("Prometheus holds no series"))
    elif case == "source down":
        kwargs["error"] = "metrics unavailable: Prometheus is unreachable"
    elif case == "stale":
        kwargs["now"] = at + 3 * MAX_AGE_S
    elif case == "no gpu series":
        kwargs["latest"] = _quiet(t)
    elif case == "no vllm series":
        kwargs["latest"] = replace(t, deployments=())
    else:
        kwargs.update(latest=None, last_sample_at=None)
    reading = live_reading(**kwargs)  # type: ignore[arg-type]
    assert not reading.known and reading.current() is None and reading.unknown
    gate = qps_gate(reading)
    assert gate.passed is False and gate.band == UNKNOWN_BAND
    assert gate.message.startswith("unknown — ") and reading.unknown in gate.message
    assert "safe" not in gate.message
    expected = {"no data": "no data: Prometheus holds no series", "source down": "unreachable",
                "stale": "s old", "no gpu series": "no GPU series",
                "no vllm series": "model-server series", "no sample yet": "no sample yet"}
    assert expected[case] in reading.unknown


def test_missing_series_needs_what_the_layout_holds(twin: Twin) -> None:
    t = twin.telemetry()
    nodes = twin.nodes()
    assert missing_series(t, nodes) is None
    assert missing_series(_quiet(t), ()) is None  # nothing in the cluster: nothing missing
    servers = sum(len(g.slices) for n in nodes for g in n.gpus)
    assert f"{servers} model servers run" in (missing_series(replace(t, deployments=()),
                                                             nodes) or "")


def test_the_monitor_records_no_data_as_unknown_and_keeps_nothing(twin: Twin) -> None:
    monitor = Monitor(metrics=NoData("nothing scraped"), sink=NullSink(), interval_s=30.0)
    state = monitor.sample_once()
    assert state.latest is None and state.no_data == "nothing scraped"
    assert state.error == "no data: nothing scraped"  # steps that act on samples wait


def test_the_overview_shows_no_data_never_zero_qps_or_no_alert_firing() -> None:
    at = open_page()
    rt = services.runtime()
    assert rt.sampler is not None
    rt.sampler.stop()  # this test takes the samples
    rt.monitor.metrics = NoData("Prometheus at http://prometheus:9090 holds no series")
    rt.monitor.sample_once(persist=False)
    at.run()
    assert not at.exception
    banner = [e.value for e in at.error if "QPS unknown" in e.value]
    assert banner and "no data: Prometheus at http://prometheus:9090 holds no series" \
        in banner[0], [e.value for e in at.error]
    assert "Update gates are closed" in banner[0]
    shown = [e.value for e in (*at.success, *at.info, *at.warning, *at.error, *at.caption)]
    assert not any("safe to update" in v for v in shown)
    assert not any("No alert is firing" in v for v in shown)
    assert any("Alerts cannot be evaluated without data" in w.value for w in at.warning)
    assert any("QPS gate: **closed**" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["QPS (1 m)"] == "unknown"
    # The sidebar says so on every page, with what to do.
    at.switch_page("../pages/placement.py")
    at.run()
    assert not at.exception
    assert any("Metrics unknown" in e.value and "no data" in e.value for e in at.sidebar.error)


def test_a_stale_sample_reads_as_no_data_on_the_overview() -> None:
    at = open_page()
    rt = services.runtime()
    assert rt.sampler is not None
    rt.sampler.stop()  # the monitor stopped sampling...
    state = rt.monitor.state
    assert state.latest is not None and state.error is None
    state.last_sample_at = time.time() - 4 * rt.monitor.interval_s  # ...four intervals ago
    at.run()
    assert not at.exception
    assert any("QPS unknown" in e.value and "s old" in e.value for e in at.error)
    assert not any("safe to update" in s.value for s in at.success)
