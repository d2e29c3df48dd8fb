"""The runtime built when the console process starts, not when the first browser arrives.

``python -m app.serve`` (what ``make run`` does) calls :func:`start` before it hands the
process to Streamlit: the store is migrated, the twin and its controller start and the
history backfill streams into the store in the background from the first second, so a
console that nobody opens for an hour has an hour of history when somebody does.
The first page load then *takes* that runtime (``app.services``), waiting for it if it is
still being built. If building it failed, the page builds its own and shows that error the
way it always does (store unavailable, settings refused).

A process that never called :func:`start` (AppTest, ``streamlit run`` by hand) builds the
runtime on first use, as before.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass, field

from app.bootstrap import Runtime, build_runtime, freeze_long_lived
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Prestart:
    thread: threading.Thread
    done: threading.Event = field(default_factory=threading.Event)
    runtime: Runtime | None = None
    error: BaseException | None = None
    started_at: float = field(default_factory=time.monotonic)
    taken: bool = False


_lock = threading.Lock()
_pending: _Prestart | None = None


def start(settings: Settings) -> None:
    """Build this process's runtime in a thread (the server starts listening meanwhile)."""
    global _pending
    with _lock:
        if _pending is not None:
            return
        holder = _Prestart(thread=threading.Thread(name="gsc-prestart", daemon=True,
                                                   target=lambda: _build(holder, settings)))
        _pending = holder
    holder.thread.start()
    atexit.register(_close_untaken)


def _build(holder: _Prestart, settings: Settings) -> None:
    try:
        holder.runtime = build_runtime(settings)
        freeze_long_lived()
        log.info("runtime ready in %.1f s (%s)", time.monotonic() - holder.started_at,
                 "; ".join(holder.runtime.notes) or "no notes")
    except BaseException as exc:  # handed to the first page, which builds its own
        log.warning("runtime could not be built at start-up: %s", exc)
        holder.error = exc
    finally:
        holder.done.set()


def take(timeout_s: float = 300.0) -> Runtime | None:
    """The runtime built at start-up, once; ``None`` when there is none (never started,
    already taken, failed, or not ready within ``timeout_s``)."""
    with _lock:
        holder = _pending
        if holder is None or holder.taken:
            return None
    if not holder.done.wait(timeout_s):
        log.warning("the start-up runtime is not ready after %.0f s; building another",
                    timeout_s)
        return None
    with _lock:
        if holder.taken or holder.runtime is None:
            return None
        holder.taken = True
        return holder.runtime


def status() -> str:
    """One line for logs and tests: not started / building / ready / failed / taken."""
    with _lock:
        holder = _pending
    if holder is None:
        return "not started"
    if not holder.done.is_set():
        return "building"
    if holder.error is not None:
        return f"failed: {holder.error}"
    return "taken" if holder.taken else "ready"


def _close_untaken() -> None:
    with _lock:
        holder = _pending
    if holder is not None and holder.done.is_set() and not holder.taken and holder.runtime:
        holder.runtime.close()
