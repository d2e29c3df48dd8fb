"""Overview: the fleet's QPS (with the update-safety bands), success, latency, power, cost.

Unknown is not zero: while the live reading is unknown (the metrics source is
down or holds no data, the sample is stale, series are missing) the banner
reads "QPS unknown" with the reason, the QPS gate is closed, the figures read
"unknown" and the alerts panel says alerts cannot be evaluated.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import autoscaling_services, history, mps_services, rollout_services, services
from app.widgets.charts import series_figure
from app.widgets.mps import gate_status_panel
from app.widgets.problems import short, show_unavailable
from app.widgets.rollouts import breaker_panel
from core.model import Node
from core.monitor import UNKNOWN_BAND, qps_gate
from core.telemetry import SUCCESS_SOURCE_NOTES

st.title("Overview")
services.new_page_run()  # one read of the cluster per run, shared by its parts

RANGES = {"1 h": 1.0, "6 h": 6.0, "24 h": 24.0, "7 d": 168.0, "30 d": 720.0}
CHARTS = (("qps_1m", "QPS (1 m)", "req/s", True),
          ("success_rate", "Success rate (5 m)", "", False),
          ("p99_ms", "p99 latency, worst model (5 m)", "ms", False),
          ("power_w", "Power", "W", False),
          ("cost_per_1k", "Cost per 1,000 inferences", "$", False),
          ("tops_per_w", "Delivered TOPS/W", "TOPS/W", False))
BAND_STYLE = {"safe": st.success, "caution": st.info, "high-risk": st.warning,
              "do-not-update": st.error, UNKNOWN_BAND: st.error}
UNKNOWN = "unknown"

range_label = st.segmented_control("Range", list(RANGES), default="6 h",
                                   key="overview.range") or "6 h"


def gate_caption(passed: bool) -> str:
    return ("QPS gate: **open** (SPEC §4.2: up to the high-risk band)" if passed else
            "QPS gate: **closed** (over the high-risk band, or no current data)")


def unknown_panel(reason: str, age_s: float | None) -> None:
    """What an unknown reading shows: why, what to do, and no figure that looks quiet."""
    old = "" if age_s is None else f" The last sample is {age_s:.0f} s old."
    headline = "No data" if reason.startswith("no data") else "Metrics unavailable"
    st.warning(f"{headline}: {short(reason)}.{old} {services.metrics_advice()}")
    k = st.columns(6)
    for col, label in zip(k, ("QPS (1 m)", "Success rate (5 m)", "p99, worst model", "Power",
                              "Cost / 1k inferences", "Delivered TOPS/W"), strict=True):
        col.metric(label, UNKNOWN)
    st.subheader("Alerts")
    st.warning("Alerts cannot be evaluated without data: none is known to be firing or "
               "resolved until samples arrive. Treat the fleet as unobserved.",
               icon=":material/notifications_off:")


def slo_attainment() -> dict[str, float]:
    """Per deployment, the share of requests that met the SLO (the autoscaler's view);
    a deployment without a figure is left out (shown empty: unknown)."""
    try:
        frame = autoscaling_services.autoscaling_view().frame
    except services.Unavailable:
        return {}
    if frame.empty or "SLO met" not in frame.columns:
        return {}
    return {str(k): float(v) for k, v in zip(frame["deployment"], frame["SLO met"],
                                             strict=True) if v is not None and v == v}


@st.fragment(run_every=5)
def live_panel(hours: float) -> None:
    try:
        nodes: tuple[Node, ...] | None = services.nodes_this_run()
    except services.Unavailable:
        nodes = None  # the layout is unknown: so is the cost
    reading = services.live_reading_now(nodes)
    if reading.telemetry is None and reading.unknown == "no sample yet":
        st.info("QPS unknown — collecting the first sample…")
        return
    bands = services.settings().qps_bands
    gate = qps_gate(reading, safe=bands.safe, caution=bands.caution,
                    high_risk=bands.high_risk)
    t = reading.current()
    if t is None:
        reason = reading.unknown or UNKNOWN
        BAND_STYLE[UNKNOWN_BAND](f"**QPS {UNKNOWN}** — {short(reason)}. Update gates are "
                                 "closed until data arrives.", icon=":material/help:")
        st.caption(gate_caption(gate.passed))
        unknown_panel(reason, reading.age_s)
        return
    BAND_STYLE[gate.band](f"**{t.totals.qps:.0f} QPS** — {gate.message}")
    st.caption(gate_caption(gate.passed))

    k = st.columns(6)
    tot = t.totals
    k[0].metric("QPS (1 m)", f"{tot.qps:.1f}")
    k[1].metric("Success rate (5 m)",
                "—" if tot.success_rate is None else f"{tot.success_rate:.2%}",
                help=SUCCESS_SOURCE_NOTES.get(tot.success_source, tot.success_source))
    p99 = max((d.p99_latency_ms for d in t.deployments if d.p99_latency_ms is not None),
              default=None)
    k[2].metric("p99, worst model", "—" if p99 is None else f"{p99:.0f} ms")
    k[3].metric("Power", f"{tot.power_w / 1000:.2f} kW")
    cost = None if nodes is None else services.live_cost(t, nodes)
    per_1k = None if cost is None else cost.cost_per_1k
    k[4].metric("Cost / 1k inferences", "—" if per_1k is None else f"${float(per_1k):.4f}",
                help="Every GPU in use, whole, plus energy, over the inferences served: "
                     "idle included")
    k[5].metric("Delivered TOPS/W", f"{tot.tops_per_w:.2f}")
    if cost is None:
        rate = "Cost unknown: the cluster's layout (who holds which GPU share) cannot be read."
    else:
        rate = (f"Cost rate ${float(cost.total_per_hour):.2f}/h for {cost.gpus_in_use} GPUs "
                f"in use, of which idle (unallocated share of GPUs in use) "
                f"${float(cost.idle_cost_per_hour):.2f}/h.")
    source = SUCCESS_SOURCE_NOTES.get(tot.success_source, tot.success_source)
    st.caption(f"{rate} Queue: {tot.queue_waiting} waiting. Success rate: {source}.")

    state = services.monitor_state()
    st.subheader("Alerts")
    if not state.firing and not state.pending:
        st.caption("No alert is firing.")
    else:
        st.dataframe(pd.DataFrame([{
            "alert": a.name, "state": "firing" if a.firing else "pending",
            "severity": a.severity, "labels": ", ".join(f"{k}={v}" for k, v in a.labels.items()),
            "summary": a.summary, "since": pd.to_datetime(a.active_since, unit="s", utc=True),
            "runbook": a.runbook_url,
        } for a in (*state.firing, *state.pending)]), hide_index=True, width="stretch",
            column_config={"runbook": st.column_config.LinkColumn()})

    st.subheader("Model deployments")
    attainment = slo_attainment()
    st.dataframe(pd.DataFrame([{
        "model": d.model, "namespace": d.namespace, "replicas": d.replicas,
        "SLO met": attainment.get(f"{d.namespace}/{d.model}"),
        "QPS 1m": d.qps_1m, "QPS 5m": d.qps_5m, "QPS 15m": d.qps_15m, "QPS 1h": d.qps_1h,
        "success": d.success_rate, "p99 ms": d.p99_latency_ms, "waiting": d.queue_waiting,
        "running": d.running, "nodes": ", ".join(d.nodes),
    } for d in t.deployments]), hide_index=True, width="stretch",
        column_config={c: st.column_config.NumberColumn(format="%.2f")
                       for c in ("QPS 1m", "QPS 5m", "QPS 15m", "QPS 1h")}
        | {"success": st.column_config.NumberColumn(format="percent"),
           "SLO met": st.column_config.NumberColumn(
               format="percent", help="Share of requests within every TTFT/TPOT objective "
                                      "([slo]), from the controller's last autoscaling pass"),
           "p99 ms": st.column_config.NumberColumn(format="%.0f")})


def shared_series_figure(frame: pd.DataFrame, *, title: str, unit: str,
                         qps_bands: bool = False,
                         y_range: tuple[float, float] | None = None) -> go.Figure:
    """``series_figure``, built once per series content: a chart re-read from its cache
    on a rerun (the same points) reuses its figure instead of building it again."""
    digest = int(pd.util.hash_pandas_object(frame, index=False).sum()) if not frame.empty \
        else 0
    return _shared_figure(digest, len(frame), _frame=frame, title=title, unit=unit,
                          qps_bands=qps_bands, y_range=y_range)


@st.cache_resource(ttl=600, max_entries=64, show_spinner=False)
def _shared_figure(digest: int, rows: int, *, _frame: pd.DataFrame, title: str, unit: str,
                   qps_bands: bool, y_range: tuple[float, float] | None) -> go.Figure:
    return series_figure(_frame, title=title, unit=unit, qps_bands=qps_bands,
                         y_range=y_range)


def charts(hours: float) -> None:
    """The stored history; one message instead of the charts when the store is down.
    While the start-up backfill writes, the charts show what it wrote so far."""
    backfill = services.runtime().backfill
    loading = None if backfill is None else backfill.progress().note()
    if loading is not None:
        st.info(f"Charts: {loading}; they fill in as it is written.",
                icon=":material/hourglass_top:")
    cols = st.columns(2)
    for i, (metric, title, unit, bands) in enumerate(CHARTS):
        try:
            frame = services.fleet_series(metric, hours=hours)
        except services.Unavailable as exc:
            show_unavailable(exc, doing="read the fleet's history for the charts")
            return
        with cols[i % 2]:
            y_range = (0.0, 1.02) if metric == "success_rate" else None
            st.plotly_chart(shared_series_figure(frame, title=title, unit=unit, qps_bands=bands,
                                          y_range=y_range),
                            width="stretch", key=f"overview.chart.{metric}")


live_panel(RANGES[range_label])
# The history reruns on its own, less often for long ranges (5 s while it still loads).
_backfill = services.runtime().backfill
_refresh = 5.0 if _backfill is not None and not _backfill.progress().finished else \
    history.refresh_s(RANGES[range_label] * 3600)
st.fragment(run_every=_refresh)(charts)(RANGES[range_label])


@st.fragment(run_every=30)
def gates_panel() -> None:
    """SPEC §4.2's gates for a routine change now, and the rollout circuit breaker."""
    st.subheader("Update gates")
    kind = mps_services.update_types()[0]
    try:
        view = mps_services.gate_report(kind)
    except services.Unavailable as exc:
        show_unavailable(exc, doing="evaluate the update gates (they stay closed)")
        return
    gate_status_panel(view.report)
    try:
        breaker_panel(rollout_services.breaker())
    except services.Unavailable as exc:
        show_unavailable(exc, doing="read the rollout circuit breaker")
    st.page_link("../pages/rollouts.py", label="Rollouts",
                 icon=":material/published_with_changes:")


gates_panel()
