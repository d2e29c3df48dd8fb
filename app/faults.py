"""Dependencies that do not answer: one typed error each, and what is known to be down.

Why: the console depends on the store, the cluster API and the metrics source,
and any of them can be down while the console runs. A page must then say what
is wrong and what to do, never show a traceback. ``app.services`` wraps every
store call in ``store_errors`` and every cluster call in ``cluster_errors``;
each turns the client's failure into ``StoreUnavailable`` or
``ClusterUnavailable`` (both ``Unavailable``, a ``TransientError``) whose
message names what failed (URLs redacted) and whose ``advice`` says what to do.

``HealthBook`` remembers the last outcome per dependency, so that every page
can say which one is down, even a page that did not call it: ``probe`` reuses
an outcome younger than its TTL and otherwise runs the given check. Nothing
here calls Streamlit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

from core.errors import SchedulerError, TransientError, ValidationError
from core.redact import redact_text

RETRY_AFTER_S = 30.0
STORE = "store"
CLUSTER = "cluster"


class Unavailable(TransientError):
    """A dependency did not answer: the message says what failed, ``advice`` what to do."""

    dependency = "a dependency"

    def __init__(self, message: str, *, advice: str) -> None:
        self.advice = advice
        super().__init__(redact_text(message), delay=RETRY_AFTER_S)


class StoreUnavailable(Unavailable):
    dependency = STORE


class ClusterUnavailable(Unavailable):
    dependency = CLUSTER


STORE_ADVICE = ("Check that the database (`DATABASE_URL`) is running and reachable from the "
                "console, then reload the page.")
CLUSTER_ADVICE = ("Check that the Kubernetes API server is up and reachable from the console "
                  "(`KUBECONFIG` or the pod's service account) and that its RBAC allows the "
                  "call, then reload the page.")


def store_unavailable(exc: SQLAlchemyError, *, store_url: str) -> StoreUnavailable:
    """The store's failure, named by its driver's first line (``store_url`` redacted)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return StoreUnavailable(f"the store ({store_url}) did not answer: {first}",
                            advice=STORE_ADVICE)


class HealthBook:
    """The last outcome per dependency: ``None`` (it answered) or the problem, and when."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, str | None]] = {}

    def note(self, dependency: str, problem: str | None) -> None:
        with self._lock:
            self._seen[dependency] = (self._clock(), problem)

    def probe(self, dependency: str, check: Callable[[], None], *, ttl_s: float
              ) -> str | None:
        """The last problem if noted under ``ttl_s`` ago, else ``check()``'s outcome
        (``check`` raises ``Unavailable``, or another ``SchedulerError``, when it fails)."""
        with self._lock:
            seen = self._seen.get(dependency)
        if seen is not None and self._clock() - seen[0] < ttl_s:
            return seen[1]
        try:
            check()
        except SchedulerError as exc:  # Unavailable, or a refusal such as a bad setting
            self.note(dependency, str(exc))
            return str(exc)
        self.note(dependency, None)
        return None


@contextmanager
def store_errors(*, store_url: str, book: HealthBook | None = None) -> Iterator[None]:
    """Store errors become ``StoreUnavailable``; the outcome goes to ``book``."""
    try:
        yield
    except SQLAlchemyError as exc:
        error = store_unavailable(exc, store_url=store_url)
        if book is not None:
            book.note(STORE, str(error))
        raise error from exc
    if book is not None:
        book.note(STORE, None)


@contextmanager
def cluster_errors(*, source: str, book: HealthBook | None = None) -> Iterator[None]:
    """The cluster's errors (not bad input) become ``ClusterUnavailable``; noted."""
    try:
        yield
    except SchedulerError as exc:
        if isinstance(exc, ValidationError | Unavailable):
            raise
        error = ClusterUnavailable(f"the cluster ({source}) did not answer: {exc}",
                                   advice=CLUSTER_ADVICE)
        if book is not None:
            book.note(CLUSTER, str(error))
        raise error from exc
    if book is not None:
        book.note(CLUSTER, None)
