"""Console entrypoint: page config, navigation, shared sidebar.

The sidebar names what the console is connected to (URLs without credentials)
and lists every dependency known to be down with what to do, on every page. A
console that cannot start (the store does not answer, a setting is wrong) says
why instead of showing a traceback, and tries again on the next page load.
"""

from __future__ import annotations

import streamlit as st

from app import auth, services
from app.state import init_session_state
from app.widgets.problems import health_panel, short
from core.errors import SchedulerError
from core.redact import redact_text

st.set_page_config(page_title="GPU Scheduler Console", page_icon=":material/memory:",
                   layout="wide")
init_session_state()

try:
    rt = services.runtime()
except services.Unavailable as exc:
    st.error(f"**The console cannot start**: {short(str(exc))}. {exc.advice} It tries "
             "again on the next page load.", icon=":material/cloud_off:")
    st.stop()
except SchedulerError as exc:  # a setting or the kubeconfig is wrong
    st.error(f"**The console cannot start**: {short(str(exc))}. Fix the setting named "
             "and restart the console.", icon=":material/settings_alert:")
    st.stop()

# Nobody sees a page before they are signed in (or the console is loopback-only).
who = auth.gate()

pages = [
    st.Page("../pages/overview.py", title="Overview", icon=":material/monitoring:",
            default=True),
    st.Page("../pages/fleet.py", title="Fleet", icon=":material/dns:", url_path="fleet"),
    st.Page("../pages/placement.py", title="Placement", icon=":material/hub:",
            url_path="placement"),
    st.Page("../pages/mps.py", title="MPS planner", icon=":material/view_column:",
            url_path="mps"),
    st.Page("../pages/rollouts.py", title="Rollouts", icon=":material/published_with_changes:",
            url_path="rollouts"),
    st.Page("../pages/costs.py", title="Cost reports", icon=":material/payments:",
            url_path="costs"),
    st.Page("../pages/weights.py", title="Scheduler weights", icon=":material/tune:",
            url_path="weights"),
    st.Page("../pages/autoscaling.py", title="Autoscaling", icon=":material/open_in_full:",
            url_path="autoscaling"),
    st.Page("../pages/evaluation.py", title="Evaluation", icon=":material/insights:",
            url_path="evaluation"),
    st.Page("../pages/audit.py", title="Audit", icon=":material/history:", url_path="audit"),
]
page = st.navigation(pages)

with st.sidebar:
    st.markdown("**GPU Scheduler Console**")
    auth.sidebar(who)
    st.caption(f"Fleet: {services.fleet_source()}")
    st.caption(f"Metrics: {redact_text(rt.metrics_source)}")
    st.caption(f"Store: {services.store_display_url()}")
    s = services.settings()
    st.caption(f"Prices as of {s.prices_as_of}: "
               + ", ".join(f"{t.name} ${t.price_per_gpu_hour}/GPU-h"
                           for t in s.catalog.types.values())
               + f"; electricity ${s.catalog.electricity_per_kwh}/kWh")
    health = services.health()
    health_panel(store=health.store, cluster=health.cluster, metrics=health.metrics,
                 metrics_advice=services.metrics_advice(),
                 store_advice=services.STORE_ADVICE,
                 cluster_advice=services.CLUSTER_ADVICE)

page.run()
