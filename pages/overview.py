"""Overview: the fleet's QPS (with the update-safety bands), success, latency, power, cost."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app import services
from app.widgets.charts import series_figure
from core.monitor import qps_band

st.title("Overview")

RANGES = {"1 h": 1.0, "6 h": 6.0, "24 h": 24.0, "7 d": 168.0, "30 d": 720.0}
CHARTS = (("qps_1m", "QPS (1 m)", "req/s", True),
          ("success_rate", "Success rate (5 m)", "", False),
          ("p99_ms", "p99 latency, worst model (5 m)", "ms", False),
          ("power_w", "Power", "W", False),
          ("cost_per_1k", "Cost per 1,000 inferences", "$", False),
          ("tops_per_w", "Delivered TOPS/W", "TOPS/W", False))
BAND_STYLE = {"safe": st.success, "caution": st.info, "high-risk": st.warning,
              "do-not-update": st.error}

range_label = st.segmented_control("Range", list(RANGES), default="6 h",
                                   key="overview.range") or "6 h"


@st.fragment(run_every=5)
def live_panel(hours: float) -> None:
    state = services.monitor_state()
    t = state.latest
    if t is None:
        if state.error:
            st.error(f"Metrics unavailable: {state.error}. Check the metrics source "
                     "(Prometheus URL or the embedded twin) and its network reachability.")
        else:
            st.info("Collecting the first sample…")
        return
    if state.error:
        age = time.time() - (state.last_sample_at or time.time())
        st.warning(f"Metrics unavailable: {state.error}. Showing the last sample, "
                   f"{age:.0f} s old. Update gates fail closed while this lasts.")
    bands = services.settings().qps_bands
    band, advice = qps_band(t.totals.qps, safe=bands.safe, caution=bands.caution,
                            high_risk=bands.high_risk)
    BAND_STYLE[band](f"**{t.totals.qps:.0f} QPS** — {advice}")

    k = st.columns(6)
    tot = t.totals
    k[0].metric("QPS (1 m)", f"{tot.qps:.1f}")
    k[1].metric("Success rate (5 m)",
                "—" if tot.success_rate is None else f"{tot.success_rate:.2%}")
    p99 = max((d.p99_latency_ms for d in t.deployments if d.p99_latency_ms is not None),
              default=None)
    k[2].metric("p99, worst model", "—" if p99 is None else f"{p99:.0f} ms")
    k[3].metric("Power", f"{tot.power_w / 1000:.2f} kW")
    cost = services.live_cost(t)
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
    st.caption(f"{rate} Queue: {tot.queue_waiting} waiting.")

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

    cols = st.columns(2)
    for i, (metric, title, unit, bands) in enumerate(CHARTS):
        frame = services.fleet_series(metric, hours=hours)
        with cols[i % 2]:
            y_range = (0.0, 1.02) if metric == "success_rate" else None
            st.plotly_chart(series_figure(frame, title=title, unit=unit, qps_bands=bands,
                                          y_range=y_range),
                            width="stretch", key=f"overview.chart.{metric}")

    st.subheader("Model deployments")
    st.dataframe(pd.DataFrame([{
        "model": d.model, "namespace": d.namespace, "replicas": d.replicas,
        "QPS 1m": d.qps_1m, "QPS 5m": d.qps_5m, "QPS 15m": d.qps_15m, "QPS 1h": d.qps_1h,
        "success": d.success_rate, "p99 ms": d.p99_latency_ms, "waiting": d.queue_waiting,
        "running": d.running, "nodes": ", ".join(d.nodes),
    } for d in t.deployments]), hide_index=True, width="stretch",
        column_config={c: st.column_config.NumberColumn(format="%.2f")
                       for c in ("QPS 1m", "QPS 5m", "QPS 15m", "QPS 1h")}
        | {"success": st.column_config.NumberColumn(format="percent"),
           "p99 ms": st.column_config.NumberColumn(format="%.0f")})


live_panel(RANGES[range_label])
