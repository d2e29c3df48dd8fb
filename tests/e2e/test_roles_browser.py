"""Sign-in and roles in a real browser (Playwright driving Debian's Chromium) against a
console with local accounts: a viewer sees no action and a forged one changes nothing,
an operator cordons, an approver approves weights, the Audit page names each of them,
and its CSV export holds the rows shown. Also a wrong password and a locked-out account."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.auth import hash_password
from tests.e2e.console import chromium, running_console

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"vic": "viewer-pw-1", "otto": "operator-pw-1", "ada": "approver-pw-1",
             "lou": "locked-pw-1"}
ROLES = {"vic": "viewer", "otto": "operator", "ada": "approver", "lou": "operator"}

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    base = tmp_path_factory.mktemp("roles")
    settings = base / "settings.toml"
    lines = ["[auth]", 'mode = "local"', "max_failures = 3"]
    for name, password in PASSWORDS.items():
        lines += [f"[auth.accounts.{name}]", f'role = "{ROLES[name]}"',
                  f'password_hash = "{hash_password(password, salt=os.urandom(16))}"']
    settings.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with running_console(base, {"GSC_SETTINGS_FILE": str(settings),
                                "GSC_BACKFILL_HOURS": "0.25",
                                "GSC_EMBEDDED_CONTROLLER": "0"}) as url:
        yield url, f"sqlite:///{base / 'console.db'}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def signed_in(browser: Any, url: str, name: str, password: str | None = None) -> Any:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.goto(url)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
    page.get_by_label("Account").fill(name)
    page.get_by_role("textbox", name="Password").fill(password or PASSWORDS[name])
    page.get_by_role("button", name="Sign in").click()
    return page


def go(page: Any, title: str) -> None:
    """Navigate inside the session (a reload would be a new, signed-out session)."""
    from playwright.sync_api import expect

    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30_000)


def audit_rows(store: str, **where: str) -> list[Any]:
    from db.audit import list_audit
    from db.engine import make_engine, session_factory

    engine = make_engine(store)
    try:
        with session_factory(engine)() as s:
            return list_audit(s, **where)
    finally:
        engine.dispose()


def test_a_wrong_password_and_a_locked_out_account(console: tuple[str, str],
                                                   browser: Any) -> None:
    from playwright.sync_api import expect

    url, _ = console
    page = signed_in(browser, url, "otto", "wrong")
    expect(page.get_by_text("Wrong account name or password.")).to_be_visible(timeout=30_000)
    page.close()
    for _ in range(3):
        page = signed_in(browser, url, "lou", "guess")
        expect(page.get_by_text("Wrong account name or password.")).to_be_visible(
            timeout=30_000)
        page.close()
    page = signed_in(browser, url, "lou")  # the right password, but locked out
    expect(page.get_by_text("Too many failed sign-ins")).to_be_visible(timeout=30_000)
    page.close()


def test_viewer_operator_approver_and_the_audit_of_all_three(console: tuple[str, str],
                                                             browser: Any,
                                                             tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, store = console
    # A proposal waiting for an approver, as the feedback loop leaves one.
    from datetime import UTC, datetime

    from core.model import SchedulerWeights
    from db import versions
    from db.engine import make_engine, session_factory

    engine = make_engine(store)
    with session_factory(engine).begin() as s:
        proposed = versions.propose_weights(
            s, SchedulerWeights(efficiency=0.28, affinity=0.25, utilization=0.20, power=0.15,
                                mps=0.12), author="feedback-loop", reason="more MPS packing",
            evidence={}, now=datetime.now(UTC)).version
    engine.dispose()

    # Viewer: every action disabled; a forged click on one changes nothing.
    page = signed_in(browser, url, "vic")
    expect(page.get_by_text("Signed in as vic")).to_be_visible(timeout=60_000)
    go(page, "Fleet")
    cordon = page.get_by_role("button", name="Cordon", exact=True)
    expect(cordon).to_be_disabled()
    page.get_by_label("Reason (kept in the audit trail)").fill("forged")
    cordon.evaluate("""el => {
        const key = Object.keys(el).find(k => k.startsWith('__reactProps'));
        el.removeAttribute('disabled');
        el[key].onClick({preventDefault() {}, stopPropagation() {}, nativeEvent: {}});
    }""")
    time.sleep(3)
    expect(page.get_by_text(" cordoned.")).to_have_count(0)
    assert not audit_rows(store, action="cordon")
    go(page, "Scheduler weights")
    expect(page.get_by_role("button", name="Approve")).to_be_disabled()
    page.close()

    # Operator: cordons a node, and the Fleet page shows it.
    page = signed_in(browser, url, "otto")
    expect(page.get_by_text("Signed in as otto")).to_be_visible(timeout=60_000)
    go(page, "Fleet")
    page.get_by_label("Reason (kept in the audit trail)").fill("e2e maintenance")
    page.get_by_role("button", name="Cordon", exact=True).click()
    expect(page.get_by_text(" cordoned.")).to_be_visible(timeout=30_000)
    cordoned = page.get_by_test_id("stMetric").filter(has_text="Cordoned")
    expect(cordoned).to_contain_text("1", timeout=30_000)
    go(page, "Scheduler weights")
    expect(page.get_by_role("button", name="Approve")).to_be_disabled()
    page.close()

    # Approver: approves the proposed weight version.
    page = signed_in(browser, url, "ada")
    expect(page.get_by_text("Signed in as ada")).to_be_visible(timeout=60_000)
    go(page, "Scheduler weights")
    page.get_by_label("Reason (required, goes to the audit trail)").fill("e2e approval")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_text(f"Version {proposed} approved")).to_be_visible(timeout=30_000)

    # The Audit page shows all three with the right actor, and exports what it shows.
    go(page, "Audit")
    table = page.get_by_test_id("stDataFrame")
    expect(table).to_be_visible(timeout=30_000)
    (cordon_entry,) = audit_rows(store, action="cordon")
    (approval,) = audit_rows(store, action="approve-weights")
    assert cordon_entry.actor == "otto" and approval.actor == "ada"
    assert approval.details["role"] == "approver" and "shown" in approval.details
    assert {e.actor for e in audit_rows(store, action="sign-in")} >= {"vic", "otto", "ada"}
    entries = page.get_by_test_id("stMetric").filter(has_text="Entries")
    count = int(entries.get_by_test_id("stMetricValue").inner_text())
    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("button", name="Export CSV").click()
    path = tmp_path / "audit.csv"
    download.value.save_as(path)
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == count
    assert {("otto", "cordon"), ("ada", "approve-weights")} <= {(r["actor"], r["action"])
                                                               for r in rows}
    time.sleep(1)
    (export,) = audit_rows(store, action="export-csv")
    assert export.actor == "ada" and export.details["rows"] == count
    page.screenshot(path=str(tmp_path / "audit.png"), full_page=True)
    page.close()
