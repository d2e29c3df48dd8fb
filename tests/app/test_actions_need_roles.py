"""Every action the console can take checks the actor's role on the server: called
directly as a viewer, each one is refused, changes nothing and is audited as refused."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import actions, services
from core.auth import Actor, Forbidden, Role
from db.audit import list_audit
from db.models import AuditEventRow, Base

ROOT = Path(__file__).resolve().parents[2]
VIEWER = Actor("mallory", Role.VIEWER, "test")
OPERATOR = Actor("olga", Role.OPERATOR, "test")
# Functions that write without being an action: the sign-in flow itself (audited there).
NOT_ACTIONS = {"sign_in", "sign_out", "current", "_audit", "gate"}
# Written by the console's own monitor thread while the test runs, not by any action.
MONITOR_TABLES = {"metric_samples", "metric_rollups", "cost_ledger", "alert_events"}


def row_counts() -> dict[str, int]:
    with services.runtime().factory() as s:
        return {name: s.scalar(select(func.count()).select_from(table)) or 0
                for name, table in Base.metadata.tables.items()
                if name != AuditEventRow.__tablename__ and name not in MONITOR_TABLES}


def test_the_registry_lists_the_actions_of_every_page() -> None:
    names = set(actions.load_all())
    assert {"submit-requests", "place-queued", "cordon-or-uncordon",
            "pause-or-resume-autoscaling", "simulate-traffic-surge", "decide-weights",
            "roll-back-weights", "export-csv"} <= names


@pytest.mark.parametrize("name", sorted(n for n, a in actions.load_all().items()
                                        if a.role is not Role.VIEWER))
def test_each_action_refuses_a_viewer_changes_nothing_and_audits_the_refusal(
        name: str) -> None:
    spec = actions.load_all()[name]
    backfill = services.runtime().backfill
    if backfill is not None:
        backfill.join(timeout=60)
    before = row_counts()
    nodes_before = [(n.name, n.schedulable) for n in services.fleet_nodes()]
    with pytest.raises(Forbidden) as err:
        spec.function(VIEWER, reason="forged")
    assert f"needs the {spec.role.value} role" in str(err.value)
    assert row_counts() == before
    assert [(n.name, n.schedulable) for n in services.fleet_nodes()] == nodes_before
    with services.runtime().factory() as s:
        (entry,) = list_audit(s, actor="mallory", action=name)
    assert entry.details["outcome"] == "refused" and entry.details["needed"] == spec.role.value
    assert entry.reason == "forged"


def test_an_operator_is_refused_what_needs_an_approver() -> None:
    approver_only = [a for a in actions.load_all().values() if a.role is Role.APPROVER]
    assert approver_only
    for spec in approver_only:
        with pytest.raises(Forbidden):
            spec.function(OPERATOR, reason="not mine to approve")


def _writes(fn: ast.FunctionDef) -> bool:
    text = ast.unparse(fn)
    return ".begin()" in text or "set_schedulable(" in text or ".inject(" in text


def test_no_public_service_function_writes_without_being_a_registered_action() -> None:
    actions.load_all()
    registered = {a.function.__wrapped__ for a in actions.ACTIONS.values()}  # type: ignore[attr-defined]
    for module_name in actions.SERVICE_MODULES:
        path = ROOT / Path(*module_name.split(".")).with_suffix(".py")
        if not path.exists():
            continue
        module = __import__(module_name, fromlist=["_"])
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name in NOT_ACTIONS:
                continue
            if node.name.startswith("_") or not _writes(node):
                continue
            fn = inspect.unwrap(getattr(module, node.name))
            assert fn in registered, f"{module_name}.{node.name} writes but is not an @action"
