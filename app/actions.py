"""Every human action is one service function registered here with the role it needs.

``@action("cordon", role=Role.OPERATOR, object_type="node", object_arg="node")`` wraps a
service function whose first parameter is the acting ``core.auth.Actor``. Before the
function runs, the wrapper checks the role; a refused call changes nothing, is written
to the audit as refused (who, what, which object, the reason they typed, the role it
needed) and raises ``core.auth.Forbidden``, whose message the page shows. The check
that counts is this one: pages only hide or disable what a role cannot do.

``ACTIONS`` lists every registered action, so a test can call each one as a viewer.
Service modules register on import; ``load_all`` imports them all.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from core.auth import Actor, Forbidden, Role, allows

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)

# The modules that define actions (``load_all`` imports them, for the registry's tests).
SERVICE_MODULES = ("app.services", "app.auth", "app.audit_services",
                   "app.autoscaling_services", "app.cost_services", "app.mps_services",
                   "app.rollout_services")
MAX_SHOWN_BYTES = 64 * 1024  # a snapshot of what someone was shown, not a data dump


@dataclass(frozen=True)
class ActionSpec:
    name: str
    role: Role
    object_type: str
    object_arg: str | None
    function: Callable[..., Any]


ACTIONS: dict[str, ActionSpec] = {}
# Opens the transaction a refusal is audited in; set by ``app.services`` when it loads
# (it owns the runtime), so this module needs no import of it.
refusal_session: Callable[[], Any] | None = None


def action(name: str, *, role: Role, object_type: str,
           object_arg: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a service function as the action ``name`` that needs ``role``."""

    def register(fn: Callable[P, R]) -> Callable[P, R]:
        params = list(inspect.signature(fn).parameters)
        if not params or params[0] != "actor":
            raise TypeError(f"action {name}: the first parameter must be `actor`")
        if object_arg is not None and object_arg not in params:
            raise TypeError(f"action {name}: no parameter {object_arg!r}")
        if name in ACTIONS and ACTIONS[name].function.__qualname__ != fn.__qualname__:
            raise TypeError(f"action {name} is registered twice")

        @functools.wraps(fn)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = inspect.signature(fn).bind_partial(*args, **kwargs)
            actor = bound.arguments.get("actor")
            if not isinstance(actor, Actor):
                raise TypeError(f"action {name} needs an Actor, got {type(actor).__name__}")
            if not allows(actor.role, role):
                obj = bound.arguments.get(object_arg) if object_arg else None
                reason = bound.arguments.get("reason", "")
                _record_refusal(actor, name=name, needed=role, object_type=object_type,
                                object_id="" if obj is None else str(obj),
                                reason=reason if isinstance(reason, str) else "")
                raise Forbidden(actor=actor, action=name, needed=role)
            return fn(*args, **kwargs)

        ACTIONS[name] = ActionSpec(name, role, object_type, object_arg, checked)
        checked.action_name = name  # type: ignore[attr-defined]
        return checked

    return register


def _record_refusal(actor: Actor, *, name: str, needed: Role, object_type: str,
                    object_id: str, reason: str) -> None:
    """Audit a refused action; a store that does not answer must not turn a refusal
    into a crash, so that failure is logged and the refusal still raised."""
    from db import audit

    try:
        if refusal_session is None:
            raise RuntimeError("no store to audit refusals in (app.services not loaded)")
        with refusal_session() as s:
            audit.record_audit(s, actor=actor.name, action=name, object_type=object_type,
                              object_id=object_id[:128], reason=reason[:2000],
                              now=datetime.now(UTC),
                              details=audit_details(actor, outcome="refused",
                                                    needed=needed.value))
    except Exception as exc:  # the refusal stands either way
        log.warning("refused action %s by %s was not audited: %s", name, actor.name,
                    type(exc).__name__)


def audit_details(actor: Actor, *, outcome: str = "done",
                  shown: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The audit entry's details: the actor's role and how they signed in, the outcome,
    and ``shown``, the figures on their screen when they acted (bounded in size)."""
    out: dict[str, Any] = {"outcome": outcome, "role": actor.role.value, "via": actor.via}
    out.update(extra)
    if shown:
        import json

        text = json.dumps(dict(shown), default=str, sort_keys=True)
        out["shown"] = (json.loads(text) if len(text) <= MAX_SHOWN_BYTES
                        else {"truncated": text[:MAX_SHOWN_BYTES]})
    return out


def load_all() -> dict[str, ActionSpec]:
    """Import every service module (registering its actions) and return the registry."""
    for module in SERVICE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return dict(ACTIONS)
