"""Rollouts: plans with their gates, live progress per step and node, the canary analysis,
the circuit breaker, and the approver's actions (approve, promote, pause, resume, abort,
roll back, fail over), each confirmed, with a reason, checked and audited on the server."""

from __future__ import annotations

import streamlit as st

from app import auth, mps_services, rollout_services, services
from app.widgets.mps import gate_table
from app.widgets.problems import show_refused, show_unavailable
from app.widgets.rollouts import (
    ROLLOUTS_NOTICE,
    ROLLOUTS_SELECTED,
    analysis_figures,
    breaker_panel,
    label,
    plans_table,
    progress_panel,
)
from core.auth import Forbidden, Role
from core.errors import ValidationError
from core.rollout.gates import GateReport
from core.rollout.machine import TransitionRefused

st.title("Rollouts")
st.caption("MPS configuration changes, node by node, gated on traffic, time windows and "
           "health. Create a plan on the MPS planner page; an approver starts it here.")

notice = st.session_state.pop(ROLLOUTS_NOTICE, None)
if notice:
    st.success(notice)

try:
    breaker_panel(rollout_services.breaker())
    plans = rollout_services.plans()
except services.Unavailable as exc:
    show_unavailable(exc, doing="read the rollout plans")
    st.stop()

if not plans:
    st.info("No rollout plan yet. Open the **MPS planner**, pick a proposal and press "
            "**Create rollout plan**.")
    st.stop()

plans_table(plans)
ids = [p.id for p in plans]
wanted = st.query_params.get("plan")  # links from notifications: /rollouts?plan=7
if wanted and wanted.isdigit() and int(wanted) in ids:
    st.session_state.setdefault(ROLLOUTS_SELECTED, int(wanted))
chosen = st.selectbox("Plan", ids, key=ROLLOUTS_SELECTED,
                      format_func=lambda i: label(next(p for p in plans if p.id == i)))


@st.fragment(run_every=5)
def live_plan(plan_id: int) -> None:
    try:
        view = rollout_services.plan(plan_id)
    except services.Unavailable as exc:
        show_unavailable(exc, doing="read the plan's progress")
        return
    p = view.plan
    c = st.columns(4)
    c[0].metric("State", view.state.value)
    c[1].metric("Strategy", p.strategy.value)
    c[2].metric("Predicted disruption", f"{p.predicted_disruption:.0%}")
    c[3].metric("Free capacity kept", f"{p.free_capacity:.0%}")
    st.caption(f"Update type {p.update_type} · nodes {', '.join(p.nodes)} · created by "
               f"{view.created_by} at {view.created_at:%Y-%m-%d %H:%M} UTC"
               + "".join(f" · {a.kind} approved by {a.approver}" for a in view.approvals))
    progress_panel(view)
    samples = rollout_services.analysis_samples(view)
    if samples:
        st.markdown("**Canary analysis**: canary against baseline over the window")
        th = services.settings().rollouts.canary
        err, p99 = analysis_figures(samples, max_error_rate=th.max_error_rate,
                                    max_p99_ms=th.max_p99_ms)
        a, b = st.columns(2)
        a.plotly_chart(err, width="stretch", key=f"rollouts.err.{plan_id}")
        b.plotly_chart(p99, width="stretch", key=f"rollouts.p99.{plan_id}")


live_plan(chosen)
view = next(p for p in plans if p.id == chosen)

tab_gates, tab_diff, tab_act = st.tabs(["Gates", "Config diff and impact", "Actions"])
with tab_gates:
    st.markdown("**At creation**")
    try:
        gate_table(GateReport.from_json(view.gate_results))
    except (ValidationError, KeyError, TypeError, ValueError):
        st.info("This plan's gate results cannot be read.")
    st.markdown("**Now**")
    try:
        now_view = mps_services.gate_report(view.plan.update_type)
    except (ValidationError, services.Unavailable) as exc:
        st.error(f"The gates cannot be evaluated now: {exc}. They stay closed.")
        now_view = None
    if now_view is not None:
        gate_table(now_view.report)
        st.caption(f"QPS band: {now_view.band} — {now_view.band_advice}")

with tab_diff:
    impact = view.predicted_impact
    cols = st.columns(3)
    cols[0].metric("Fleet $/h before", impact.get("fleet_cost_per_hour_before", "unknown"))
    cols[1].metric("Fleet $/h after", impact.get("fleet_cost_per_hour_after", "unknown"))
    cols[2].metric("Pods to move", impact.get("pods_total", "unknown"))
    for node, change in sorted(view.config_diff.items()):
        st.markdown(f"**{node}**: `{change.get('from')}` → `{change.get('to')}`")
        if change.get("diff"):
            st.code(change["diff"], language="diff")

with tab_act:
    allowed = list(view.actions)
    locked = not auth.can(Role.APPROVER)
    if not allowed:
        st.info(f"No action is possible on a {view.state.value} plan.")
    else:
        if locked:
            st.caption(auth.needs(Role.APPROVER))
        with st.form("rollouts.act", clear_on_submit=True):
            event = st.radio("Action", allowed, horizontal=True, key="rollouts.event",
                             format_func=lambda e: e.replace("_", " "), disabled=locked)
            reason = st.text_area("Reason (required, goes to the audit trail)",
                                  key="rollouts.reason", disabled=locked)
            confirm = st.checkbox("I have checked the gates and the progress above",
                                  key="rollouts.confirm", disabled=locked)
            submitted = st.form_submit_button("Apply", type="primary", disabled=locked,
                                              help=auth.needs(Role.APPROVER) if locked
                                              else None)
        if submitted:
            if not confirm:
                st.error("**confirmation**: tick the box to confirm, then apply again.")
            else:
                shown = {"plan_state": view.state.value, "progress": list(view.progress),
                         "gates_now": mps_services.shown_gates(now_view) if now_view else
                         "unknown", "qps": None if now_view is None else
                         now_view.inputs.qps}
                samples = rollout_services.analysis_samples(view)
                if samples:
                    shown["analysis_last"] = samples[-1]
                try:
                    rollout_services.BY_EVENT[event](auth.actor(), view.id, reason=reason,
                                                     shown=shown)
                except Forbidden as exc:
                    show_refused(exc)
                except ValidationError as exc:
                    st.error(f"**{exc.field}**: {exc.message}.")
                except (TransitionRefused, rollout_services.PlanConflict, KeyError) as exc:
                    st.error(f"Not applied: {exc}. Nothing changed.")
                except services.Unavailable as exc:
                    show_unavailable(exc, doing="apply the action (nothing changed)")
                else:
                    st.session_state[ROLLOUTS_NOTICE] = (
                        f"Plan {view.id}: {event.replace('_', ' ')} applied.")
                    st.rerun()

if services.runtime().twin is not None:
    with st.expander("Simulate a fault on the twin (embedded only)"):
        st.caption("Make a canary fail (errors or latency on its node), a device-plugin "
                   "restart fail (three in a row open the breaker) or the metrics go down "
                   "(gates close). Audited.")
        locked_op = not auth.can(Role.OPERATOR)
        with st.form("rollouts.fault"):
            kind = st.selectbox("Fault", rollout_services.TWIN_FAULTS, key="rollouts.fault")
            node_names = [*(n.name for n in services.fleet_nodes()),
                          rollout_services.EVERY_NODE]
            node = st.selectbox("Node", node_names, key="rollouts.fault_node")
            minutes = st.number_input("For minutes", 1.0, 240.0, 30.0, 1.0,
                                      key="rollouts.fault_minutes")
            error_rate = st.slider("Requests failing on the node (error_spike)", 0.05, 1.0,
                                   0.5, 0.05, key="rollouts.fault_rate")
            if st.form_submit_button("Start the fault", disabled=locked_op,
                                     help=auth.needs(Role.OPERATOR) if locked_op else None):
                try:
                    rollout_services.simulate_fault(auth.actor(), kind, node, minutes=minutes,
                                                    error_rate=error_rate)
                except Forbidden as exc:
                    show_refused(exc)
                except ValidationError as exc:
                    st.error(f"**{exc.field}**: {exc.message}.")
                else:
                    st.success(f"{kind} started on "
                               f"{'the fleet' if kind == 'metrics_down' else node} for "
                               f"{minutes:g} min.")
