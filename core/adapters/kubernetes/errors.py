"""The Kubernetes adapter's errors, and the one translation of client errors into them.

Why: callers must never see an ``ApiException`` or a urllib3 error, and an operator
must read from a refusal which call was refused and what to grant. Every API call
the adapter makes is described by an ``Op`` (the verb and resource RBAC checks), and
every failure goes through ``translate``, raised with ``raise … from``.

Invariants of ``translate``:
- 409 on a write that carried a ``resourceVersion`` → ``ConflictError`` (read again,
  then retry); 409 on a pod create → ``PodExistsError``;
- 429 and 5xx → ``TransientError`` whose delay honours ``Retry-After`` (header, else
  ``details.retryAfterSeconds``), else the configured retry delay;
- 401/403 → ``PermanentError`` naming the refused verb, resource and namespace;
- 404 → ``PodNotFoundError`` / ``NodeNotFoundError`` for a named pod or node;
- 400/422 → ``InvalidObjectError`` naming the field the server named;
- a refused or dropped connection → ``TransientError``;
- a ``Status`` with ``status: Failure`` in a 2xx answer (the eviction subresource
  answers 201 with ``code: 500`` for a pod under two PodDisruptionBudgets) is a
  failure with the code it names, as client-go reads it; the Python client would
  otherwise take it for success (``failed_status``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from core.adapters.errors import innermost_reason
from core.errors import PermanentError, SchedulerError, TransientError, ValidationError
from core.ports import PodExistsError, PodNotFoundError


class ConflictError(TransientError):
    """HTTP 409 on a write carrying a stale ``resourceVersion``: read again, then retry."""


class NodeNotFoundError(ValidationError, PermanentError):
    """The node named does not exist (the twin refuses an unknown node the same way)."""

    def __init__(self, node: str) -> None:
        super().__init__("node", f"{node!r} is not a node of this cluster")


class InvalidObjectError(ValidationError, PermanentError):
    """The API server refused an object as invalid (HTTP 400/422)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One API call, as RBAC sees it: for messages that name what was refused."""

    verb: str
    resource: str
    _: KW_ONLY
    namespace: str | None = None
    name: str | None = None
    all_namespaces: bool = False

    def __str__(self) -> str:
        if self.namespace:
            scope = f" in namespace {self.namespace}"
        elif self.all_namespaces:
            scope = " in all namespaces"
        else:
            scope = " at the cluster scope"
        return f"{self.verb} {self.resource}{scope}"

    @property
    def target(self) -> str:
        if self.name and self.namespace:
            return f"{self.resource} {self.namespace}/{self.name}"
        return f"{self.resource} {self.name}" if self.name else self.resource


def translate(exc: BaseException, *, op: Op, retry_delay_s: float) -> SchedulerError:
    """The project's error for a failed API call ``op`` (raise it ``from exc``)."""
    if not isinstance(exc, ApiException):
        why = innermost_reason(exc)
        return TransientError(f"cannot reach the Kubernetes API server to {op}: {why}",
                              delay=retry_delay_s)
    status = int(exc.status or 0)
    body = _status_body(exc)
    message = str(body.get("message") or exc.reason or "").strip()
    reason = str(body.get("reason") or "")
    causes = [str(c.get("message")) for c in (body.get("details") or {}).get("causes") or ()
              if isinstance(c, Mapping) and c.get("message")]
    detail = message + (f" ({'; '.join(causes)})" if causes else "")
    if status == 0:
        return PermanentError(f"cannot {op}: {detail}")
    if status == 401:
        return PermanentError(
            f"unauthorized: the API server refused the credentials while trying to {op}; "
            "check the kubeconfig or the service-account token")
    if status == 403:
        return PermanentError(f"forbidden: the service account may not {op} "
                              f"(grant it in deploy/k8s/rbac.yaml); API server: {detail}")
    if status == 404:
        if op.resource.startswith("pods") and op.name:
            return PodNotFoundError(f"pod {op.namespace}/{op.name} not found")
        if op.resource == "nodes" and op.name:
            return NodeNotFoundError(op.name)
        return PermanentError(f"not found: {op.target}: {detail}")
    if status == 409:
        if op.verb == "create" and op.resource == "pods":
            return PodExistsError(f"pod {op.namespace}/{op.name} already exists")
        return ConflictError(f"conflict on {op.target}: {detail}", delay=0.0)
    if status in (400, 422):
        field_name = next((str(c.get("field")) for c in (body.get("details") or {}).get(
            "causes") or () if isinstance(c, Mapping) and c.get("field")), op.target)
        return InvalidObjectError(field_name, f"refused by the API server ({reason}): {detail}")
    if status == 429 or status >= 500:
        delay = _retry_after(exc, body)
        what = "too many requests" if status == 429 else f"API server error {status} {reason}"
        return TransientError(f"{what} while trying to {op}: {detail}",
                              delay=retry_delay_s if delay is None else delay)
    if status == 410:
        return TransientError(f"expired while trying to {op}: {detail}", delay=retry_delay_s)
    return PermanentError(f"HTTP {status} {reason} while trying to {op}: {detail}")


def failed_status(data: bytes, *, op: Op, retry_delay_s: float) -> SchedulerError | None:
    """The error a 2xx answer's body declares (a ``Status`` with ``status: Failure``),
    translated like any other; None when the call succeeded."""
    try:
        body = json.loads(data) if data else {}
    except (TypeError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("kind") != "Status" or \
            body.get("status") != "Failure":
        return None
    exc = ApiException(status=int(body.get("code") or 500), reason=str(body.get("reason") or ""),
                       body=json.dumps(body))
    return translate(exc, op=op, retry_delay_s=retry_delay_s)


def _status_body(exc: ApiException) -> dict[str, Any]:
    """The ``Status`` object the API server sent with an error, or {}."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(exc: ApiException, body: Mapping[str, Any]) -> float | None:
    header = None
    if exc.headers is not None:
        header = exc.headers.get("Retry-After")
    for value in (header, (body.get("details") or {}).get("retryAfterSeconds")):
        try:
            seconds = float(value) if value is not None else None
        except (TypeError, ValueError):
            seconds = None  # an HTTP date: fall back to the default
        if seconds is not None and math.isfinite(seconds) and seconds > 0:
            return seconds
    return None
