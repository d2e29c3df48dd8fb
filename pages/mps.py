"""MPS planner: which nodes need another device-plugin config, the diff, lint and impact,
the update gates and the best update time; then "Create rollout plan"."""

from __future__ import annotations

import streamlit as st

from app import auth, mps_services, services
from app.widgets.mps import (
    best_time_panel,
    fleet_summary,
    gate_status_panel,
    gate_table,
    proposal_panel,
    proposals_table,
)
from app.widgets.problems import short, show_unavailable
from core.auth import Forbidden, Role
from core.errors import ValidationError

st.title("MPS planner")
services.new_page_run()  # one read of the cluster per run, shared by its parts
st.caption("Placement never changes a node's MPS configuration: a layout that needs another "
           "device-plugin config on a node becomes a rollout plan, proposed here.")

with st.expander("Plan for requested or forecast workloads"):
    include_queue = st.checkbox("Include the queued placement requests", value=True,
                                key="mps.include_queue")
    forecast_text = st.text_area(
        "Forecast workloads (CSV with a header: model_name, model_memory_gb, priority, "
        "latency_sla_ms)", key="mps.forecast", height=100,
        placeholder="model_name,model_memory_gb,priority,latency_sla_ms\n"
                    "llama-3-70b,40,HIGH,500")

MAX_OPEN_PROPOSALS = 10
forecast = []
if forecast_text.strip():
    try:
        forecast = services.parse_upload(forecast_text.encode(), kind="csv")
    except ValidationError as exc:
        st.error(f"**Forecast, {exc.field}**: {exc.message}. Fix it and the proposals follow.")

result = None
try:
    result = mps_services.page_proposals(forecast, include_queue=include_queue)
except services.StoreUnavailable as exc:
    show_unavailable(exc, doing="read the queued requests; the proposals below are for the "
                              "fleet as it runs and the forecast only")
    include_queue = False
    try:
        result = mps_services.page_proposals(forecast, include_queue=False)
    except services.Unavailable as again:
        show_unavailable(again, doing="plan MPS layouts (the planner needs the cluster's "
                                      "nodes)")
except services.Unavailable as exc:
    show_unavailable(exc, doing="plan MPS layouts (the planner needs the cluster's nodes)")

if result is not None:
    fleet_summary(result)
    if not result.proposals:
        st.success("Every node's device-plugin config already serves its layout: nothing "
                   "to change.")
    else:
        st.subheader("Proposals")
        proposals_table(result)
        # A big fleet may propose hundreds of nodes: the table lists them all, and at most
        # MAX_OPEN_PROPOSALS are drawn in full (layouts, YAML, diff) at once.
        shown = list(result.proposals[:MAX_OPEN_PROPOSALS])
        if len(result.proposals) > MAX_OPEN_PROPOSALS:
            picked = st.multiselect(
                f"Proposals to open (at most {MAX_OPEN_PROPOSALS})",
                [p.node for p in result.proposals], default=[p.node for p in shown],
                max_selections=MAX_OPEN_PROPOSALS, key="mps.proposal.open")
            shown = [p for p in result.proposals if p.node in set(picked)]
        for i, p in enumerate(shown):
            proposal_panel(p, key=f"mps.proposal.{i}")
        with st.expander("The device plugin's ConfigMap: diff against what runs"):
            st.code(result.config_map_diff or "(no difference)", language="diff")

st.subheader("Update gates")
types = mps_services.update_types()
kind = st.selectbox("Update type", types, key="mps.update_type",
                    format_func=lambda t: t.replace("_", " "))
view = mps_services.gate_report(kind)
gate_status_panel(view.report)
gate_table(view.report)
if view.inputs.metrics_problem:
    st.caption(f"Metrics: {short(view.inputs.metrics_problem)}. "
               f"{services.metrics_advice()}")

st.subheader("Best update time")
try:
    best_time_panel(mps_services.best_update_time())
except services.Unavailable as exc:
    show_unavailable(exc, doing="read the stored QPS history")

st.subheader("Create rollout plan")
plannable = [] if result is None else [p.node for p in result.proposals if p.can_roll_out]
if not plannable:
    st.info("No proposal to roll out: nothing to change, or the running configs are unknown.")
    st.stop()
with st.form("mps.plan"):
    nodes = st.multiselect("Nodes", plannable, default=plannable, key="mps.plan.nodes")
    strategy = st.selectbox("Strategy", mps_services.STRATEGY_CHOICES,
                            index=mps_services.STRATEGY_CHOICES.index(
                                mps_services.default_strategy()),
                            key="mps.plan.strategy", format_func=lambda s: s.replace("_", "-"))
    plan_kind = st.selectbox("Update type", types, index=types.index(kind),
                             key="mps.plan.update_type",
                             format_func=lambda t: t.replace("_", " "))
    reason = st.text_input("Reason (kept in the audit trail)", key="mps.plan.reason")
    submitted = st.form_submit_button("Create rollout plan", disabled=not auth.can(Role.OPERATOR),
                                      help=None if auth.can(Role.OPERATOR)
                                      else auth.needs(Role.OPERATOR))
if submitted:
    try:
        plan_id = mps_services.create_rollout_plan(
            auth.actor(), nodes=nodes, strategy=strategy, update_type=plan_kind,
            reason=reason, extra=forecast, include_queue=include_queue)
    except ValidationError as exc:
        st.error(f"**The plan was refused — {exc.field}**: {exc.message}.")
    except Forbidden as exc:
        st.error(f"**Not allowed**: {exc}.")
    except services.Unavailable as exc:
        show_unavailable(exc, doing="create the rollout plan")
    else:
        st.success(f"Rollout plan {plan_id} created: it waits for an approver on the "
                   "Rollouts page.")
