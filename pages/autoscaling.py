"""Autoscaling: per deployment, the queue, replicas, the recommendation and its countdown."""

from __future__ import annotations

import streamlit as st

from app import auth, autoscaling_services, services
from app.widgets.autoscaling import capacity_figure, replicas_figure, slo_rows, without_slo
from app.widgets.problems import metrics_unknown, show_refused, show_unavailable
from core.auth import Forbidden, Role
from core.errors import SchedulerError, ValidationError

st.title("Autoscaling")
st.caption("SPEC §3.6, per model deployment, one of two policies. **slo** (the default): "
           "the replicas, and the GPU type of each new one, that meet the deployment's "
           "TTFT/TPOT objectives for the forecast load at the lowest fleet cost per hour "
           "(idle GPUs counted); scale-in frees whole GPUs first. **seed**: up by 4 when the "
           "queue is long and the GPUs turn power into work, down by 2 when the queue is "
           "short and inferences are expensive, after 60 s / 300 s windows. Settings: "
           "`[slo]` (objectives, policy) and `[autoscaling]` (bounds, seed rule).")


@st.fragment(run_every=5)
def live_status() -> None:
    unknown = metrics_unknown(services.live_reading_now(), advice=services.metrics_advice())
    if unknown is not None:
        st.error(f"{unknown} Autoscaling takes no action without a current sample; the "
                 "recommendations below are from the last one.", icon=":material/monitoring:")
    try:
        view = autoscaling_services.autoscaling_view()
    except services.Unavailable as exc:
        show_unavailable(exc, doing="read the autoscaler's status")
        return
    for problem in view.unreadable:
        st.error(f"Unknown: {problem}. Autoscaling treats an unreadable switch as paused; "
                 "an operator can set it again below.")
    if view.paused:
        st.warning(f"Autoscaling is **paused** by {view.paused_by} "
                   f"({view.paused_at:%Y-%m-%d %H:%M:%S} UTC): {view.paused_reason}. "
                   "The controller still recommends but takes no action.")
    if view.sampled_at is None:
        st.info("No recommendation yet: the controller publishes one with every telemetry "
                "sample (every 30 s) while it leads.")
        return
    st.caption(f"Latest recommendations from the sample at {view.sampled_at:%H:%M:%S} UTC.")
    frame = view.frame
    if frame.empty:
        st.info("No model deployment has running replicas, so there is nothing to scale.")
        return
    c = st.columns(4)
    c[0].metric("Deployments", len(frame))
    c[1].metric("Running replicas", int(frame["running"].sum()))
    c[2].metric("Waiting to scale", int((frame["acts in s"].notna()).sum()))
    c[3].metric("Requests queued (all models)", f"{frame['queue'].sum():.0f}")
    st.dataframe(without_slo(frame), hide_index=True, width="stretch", column_config={
        "utilization": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                       format="percent"),
        "window done": st.column_config.ProgressColumn(
            "stabilization", min_value=0.0, max_value=1.0, format="percent",
            help="How much of the stabilization window the recommendation has held"),
        "acts in s": st.column_config.NumberColumn(format="%.0f s"),
        "$ / 1k inferences": st.column_config.NumberColumn(format="$%.4f"),
        "TOPS/W": st.column_config.NumberColumn(format="%.2f"),
    })
    slo = slo_rows(frame)
    if slo.empty:
        return
    st.markdown("**slo policy: forecast, capacity per replica per GPU type, and why that "
                "GPU type**")
    st.dataframe(slo, hide_index=True, width="stretch", column_config={
        "SLO met": st.column_config.ProgressColumn(
            min_value=0.0, max_value=1.0, format="percent",
            help="Over the last minutes, the lowest share within a target (TTFT per "
                 "request, TPOT per token, from vLLM's histograms)"),
        "burst ×": st.column_config.NumberColumn(format="%.2f"),
    })
    st.plotly_chart(capacity_figure(frame), width="stretch")


live_status()

st.subheader("Pause or resume")
try:
    view = autoscaling_services.autoscaling_view()
except services.Unavailable:  # the status above says why
    st.info("Pausing and resuming need the store; the form returns once it answers.")
    st.stop()
with st.form("autoscaling.pause"):
    reason = st.text_input("Reason (required, audited)", key="autoscaling.reason")
    label = "Resume autoscaling" if view.paused else "Pause autoscaling"
    locked = not auth.can(Role.OPERATOR)
    if st.form_submit_button(label, type="primary", disabled=locked,
                             help=auth.needs(Role.OPERATOR) if locked else None):
        try:
            autoscaling_services.set_autoscaling_paused(auth.actor(), not view.paused,
                                                        reason=reason)
        except Forbidden as exc:
            show_refused(exc)
        except ValidationError as exc:
            st.error(f"{exc.field}: {exc.message}")
        except services.Unavailable as exc:
            show_unavailable(exc, doing="pause or resume autoscaling (nothing changed)")
        else:
            st.success("Autoscaling resumed." if view.paused else "Autoscaling paused.")
            st.rerun()

st.subheader("History")
hours = st.segmented_control("Range", [1, 6, 24, 168], default=24,
                             format_func=lambda h: f"{h} h" if h < 168 else "7 d",
                             key="autoscaling.range") or 24
try:
    history = autoscaling_services.autoscaling_history(hours)
except services.Unavailable as exc:
    show_unavailable(exc, doing="read the autoscaling history")
    st.stop()
if history.empty:
    st.info("No autoscaling decision in this range yet.")
else:
    st.plotly_chart(replicas_figure(history), width="stretch")
    st.dataframe(history, hide_index=True, width="stretch")

models = services.twin_models()
if models:
    with st.expander("Simulate a traffic surge (embedded twin only)"):
        st.caption("Multiplies one model's request rate on the digital twin, so you can watch "
                   "the queue grow and the autoscaler act. Audited.")
        with st.form("autoscaling.surge"):
            model = st.selectbox("Model", models)
            factor = st.slider("Traffic ×", 2.0, 20.0, 6.0, 0.5)
            minutes = st.number_input("For minutes", 1.0, 240.0, 10.0, 1.0)
            locked = not auth.can(Role.OPERATOR)
            if st.form_submit_button("Start the surge", disabled=locked,
                                     help=auth.needs(Role.OPERATOR) if locked else None):
                try:
                    services.surge_traffic(auth.actor(), model, factor=factor,
                                           minutes=minutes)
                except (ValidationError, SchedulerError) as exc:
                    st.error(str(exc))
                else:
                    st.success(f"{model}: traffic ×{factor:g} for {minutes:g} min. The queue "
                               "grows within a sample or two; the autoscaler acts after its "
                               "60 s window.")
