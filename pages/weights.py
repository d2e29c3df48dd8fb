"""Scheduler weights: versions, the evidence behind a proposal, approve / reject / roll back."""

from __future__ import annotations

import streamlit as st

from app import auth, services
from app.widgets.problems import show_refused, show_unavailable
from app.widgets.weights import (
    WEIGHTS_NOTICE,
    WEIGHTS_SELECTED,
    render_evidence,
    render_last_run,
    version_label,
    versions_frame,
    weights_figure,
)
from core.auth import Forbidden, Role
from core.errors import ValidationError
from core.states import WeightState

st.title("Scheduler weights")
st.caption("The feedback loop compares predicted with actual throughput and latency, "
           "calibrates the simulator, replays recent traffic under weights near the active "
           "ones and proposes a change only when it lowers the simulated cost per inference "
           "without lowering SLA attainment. A proposal takes effect when an approver accepts "
           "it; any earlier version can be restored.")

notice = st.session_state.pop(WEIGHTS_NOTICE, None)
if notice:
    st.success(notice, icon=":material/check_circle:")

try:
    versions = services.weight_versions()
    last_run = services.last_feedback_run()
except services.Unavailable as exc:  # the store is unreachable: say so, never a traceback
    show_unavailable(exc, doing="read the weight versions")
    st.stop()

by_version = {v.version: v for v in versions}
active = next((v for v in versions if v.status == WeightState.ACTIVE), None)
proposed = [v for v in versions if v.status == WeightState.PROPOSED]
if active is None:
    st.warning("No version is active; the scheduler uses the weights from settings.")
if proposed:
    st.info(f"{len(proposed)} proposal(s) waiting for an approver: "
            + ", ".join(f"v{v.version}" for v in proposed), icon=":material/pending_actions:")

render_last_run(last_run)

default = proposed[0].version if proposed else (active.version if active else None)
if st.session_state.get(WEIGHTS_SELECTED) not in by_version:
    st.session_state[WEIGHTS_SELECTED] = default

st.subheader("Versions")
st.dataframe(versions_frame(versions), hide_index=True, width="stretch", key="weights.versions",
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in ("efficiency", "affinity", "utilization", "power", "mps")})
left, right = st.columns([2, 3])
with left:
    chosen = st.selectbox("Version", list(by_version), key=WEIGHTS_SELECTED,
                          format_func=lambda n: version_label(by_version[n]))

selected = by_version.get(chosen) if chosen is not None else None
with right:
    if active is not None:
        other = None if selected is None or selected.version == active.version else selected
        st.plotly_chart(weights_figure(active.weights, other.weights if other else None,
                                       other_name=f"v{other.version}" if other else ""),
                        width="stretch", key="weights.bars")

if selected is not None:
    st.subheader(f"Version {selected.version} ({selected.status})")
    st.markdown(f"**Reason:** {selected.reason}")
    st.caption(f"By {selected.author} at {selected.created_at:%Y-%m-%d %H:%M:%S}"
               + (f"; {selected.status} by {selected.decided_by} at "
                  f"{selected.decided_at:%Y-%m-%d %H:%M:%S}" if selected.decided_at else ""))
    if (selected.status == WeightState.PROPOSED and active is not None
            and selected.parent_version != active.version):
        st.warning(f"Proposed against version {selected.parent_version}, but version "
                   f"{active.version} is active now: its evidence compares against other "
                   "weights than the ones that would be replaced.")
    render_evidence(selected.evidence, key=f"weights.ev{selected.version}")

    action = None
    locked = not auth.can(Role.APPROVER)
    tip = auth.needs(Role.APPROVER) if locked else None
    if selected.status == WeightState.PROPOSED:
        with st.form("weights.decide", clear_on_submit=True):
            st.markdown("**Decide on this proposal**")
            reason = st.text_area("Reason (required, goes to the audit trail)",
                                  key="weights.decide_reason")
            b1, b2, _ = st.columns([1, 1, 4])
            if b1.form_submit_button("Approve", type="primary", disabled=locked, help=tip):
                action = ("approve", reason)
            if b2.form_submit_button("Reject", disabled=locked, help=tip):
                action = ("reject", reason)
    elif selected.status in services.ROLLBACK_TARGETS:
        with st.form("weights.rollback", clear_on_submit=True):
            st.markdown(f"**Roll back to version {selected.version}** (the active version "
                        "is marked rolled-back)")
            reason = st.text_area("Reason (required, goes to the audit trail)",
                                  key="weights.rollback_reason")
            if st.form_submit_button("Roll back", type="primary", disabled=locked, help=tip):
                action = ("rollback", reason)
    elif selected.status == WeightState.ACTIVE:
        st.caption("This is the active version. To restore an earlier one, select it above.")

    if action is not None:
        kind, reason = action
        # What the approver saw: the version, its weights and the evidence's headline figures.
        shown = {"version": selected.version, "status": str(selected.status),
                 "weights": selected.weights.as_dict(),
                 "evidence": {k: v for k, v in (selected.evidence or {}).items()
                              if isinstance(v, int | float | str)}}
        try:
            if kind == "rollback":
                services.roll_back_weights(auth.actor(), selected.version, reason=reason,
                                           shown=shown)
                message = f"Version {selected.version} is active again."
            else:
                services.decide_weights(auth.actor(), selected.version,
                                        approve=kind == "approve", reason=reason, shown=shown)
                message = (f"Version {selected.version} approved: it is active now."
                           if kind == "approve" else f"Version {selected.version} rejected.")
        except Forbidden as exc:
            show_refused(exc)
        except ValidationError as exc:
            st.error(f"**{exc.field}** {exc.message}.")
        except (KeyError, services.WeightConflict) as exc:
            st.error(f"{exc.args[0] if exc.args else exc}.")
        except services.Unavailable as exc:
            show_unavailable(exc, doing="save the decision (nothing changed)")
        except Exception as exc:  # the store failed: a message, never a traceback
            st.error(f"The action was not saved: {exc}. Nothing changed; try again, and "
                     "check the store if it persists.")
        else:
            st.session_state[WEIGHTS_NOTICE] = message
            st.rerun()
