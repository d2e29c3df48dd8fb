"""What is wrong and what to do: how every page shows a dependency that does not answer.

One look for every page: an ``st.error`` that names what could not be done, why
(the dependency's message, redacted, first line only) and what to do. The
sidebar's health panel lists each dependency known to be down, so a page that
did not call it says so too. Never a traceback.
"""

from __future__ import annotations

import streamlit as st

from app.faults import Unavailable
from core.auth import Forbidden
from core.monitor import LiveReading
from core.redact import redact_text

MAX_REASON_CHARS = 400


def short(reason: str) -> str:
    """``reason`` redacted, its first line only, at most ``MAX_REASON_CHARS``."""
    line = (redact_text(reason).strip().splitlines() or [""])[0]
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"


def show_refused(exc: Forbidden) -> None:
    """A refused action: who may do it, and that nothing changed (it is audited)."""
    st.error(f"**Refused**: {exc}. Nothing changed; the attempt is in the audit trail.",
             icon=":material/block:")


def show_unavailable(exc: Unavailable, *, doing: str) -> None:
    """``Could not <doing>: <why>. <what to do>``."""
    st.error(f"**Could not {doing}**: {short(str(exc))}. {exc.advice}",
             icon=":material/cloud_off:")


def metrics_unknown(reading: LiveReading, *, advice: str) -> str | None:
    """The message for live figures that are unknown; ``None`` while they are known or
    the first sample is still being taken."""
    if reading.known or reading.unknown is None or (
            reading.telemetry is None and reading.unknown == "no sample yet"):
        return None
    return f"**Metrics unknown** — {short(reading.unknown)}. {advice}"


def health_panel(*, store: str | None, cluster: str | None, metrics: LiveReading,
                 metrics_advice: str, store_advice: str, cluster_advice: str) -> None:
    """Each dependency known to be down, with what to do (in the sidebar)."""
    if store is not None:
        st.error(f"**Store down** — {short(store)}. {store_advice}",
                 icon=":material/database:")
    if cluster is not None:
        st.error(f"**Cluster API down** — {short(cluster)}. {cluster_advice}",
                 icon=":material/dns:")
    message = metrics_unknown(metrics, advice=metrics_advice)
    if message is not None:
        st.error(message, icon=":material/monitoring:")
